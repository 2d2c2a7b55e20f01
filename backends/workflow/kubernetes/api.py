"""The one place that talks to the Kubernetes API (kubernetes_asyncio), in plain JSON dicts.

Every request waits for a token of a :class:`TokenBucket` (``requests_per_second``, ``burst``), has a
timeout, and is retried with exponential backoff (plus jitter; ``Retry-After`` is honoured) when the
failure is transient: a connection error, a timeout, 429 or 5xx. What is left is raised as a
:class:`KubeApiError` (a :class:`WorkflowBackendError`) naming the verb, the object kind and name and the
HTTP status; for Secrets the server's message is left out, since it may quote what was sent.

Objects are read with ``_preload_content=False`` and parsed as JSON: the backend works on dicts in the
API's own camelCase, the same shape the manifests are built in.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from backends.backoff import backoff
from backends.workflow.base import WorkflowBackendError
from backends.workflow.kubernetes.config import Connection, KubernetesOptions

log = structlog.get_logger("wml.workflow.kubernetes")

_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 4096


class KubeApiError(WorkflowBackendError):
    def __init__(self, verb: str, kind: str, where: str, status: int, reason: str, detail: str = "") -> None:
        text = f"kubernetes {verb} {kind} {where} failed: {status} {reason}"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.status = status
        self.reason = reason


class KubeNotFoundError(KubeApiError): ...


class KubeConflictError(KubeApiError): ...


class KubeGoneError(KubeApiError):
    """410: the resourceVersion a watch asked for is too old; list again."""


@dataclass(frozen=True, slots=True)
class _Kind:
    api: str  # "core", "batch" or "networking"
    snake: str  # as in the generated method names
    namespaced: bool = True


KINDS = {
    "Job": _Kind("batch", "job"),
    "Pod": _Kind("core", "pod"),
    "Secret": _Kind("core", "secret"),
    "Namespace": _Kind("core", "namespace", namespaced=False),
    "ResourceQuota": _Kind("core", "resource_quota"),
    "NetworkPolicy": _Kind("networking", "network_policy"),
}


class TokenBucket:
    """At most ``rate`` requests a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._stamp = float(burst), time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class KubeApi:
    """kubernetes_asyncio behind a small JSON interface; see the module docstring."""

    def __init__(self, api_client: Any, options: KubernetesOptions) -> None:
        self._client = api_client
        self._apis = {
            "core": client.CoreV1Api(api_client),
            "batch": client.BatchV1Api(api_client),
            "networking": client.NetworkingV1Api(api_client),
        }
        self._options = options
        self._bucket = TokenBucket(options.requests_per_second, options.burst)

    @classmethod
    async def connect(cls, options: KubernetesOptions) -> KubeApi:
        return cls(client.ApiClient(configuration=await _configuration(options.connection)), options)

    async def close(self) -> None:
        await self._client.close()

    # -- objects ---------------------------------------------------------------------------------------

    async def create(self, kind: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        return await self._json("create", kind, namespace, name, self._args(kind, namespace), body=body)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self._json("read", kind, namespace, name, [name, *self._args(kind, namespace)])
        except KubeNotFoundError:
            return None

    async def patch(
        self, kind: str, namespace: str | None, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Change the object by a JSON merge patch (RFC 7386): ``body`` holds only what changes."""
        args = [name, *self._args(kind, namespace), body]
        return await self._json(
            "patch", kind, namespace, name, args, _content_type="application/merge-patch+json"
        )

    async def delete(
        self, kind: str, namespace: str | None, name: str, *, propagation: str | None = None
    ) -> bool:
        """Delete; False when it was not there (which is success for every caller)."""
        extra = {"propagation_policy": propagation} if propagation else {}
        try:
            await self._json("delete", kind, namespace, name, [name, *self._args(kind, namespace)], **extra)
        except KubeNotFoundError:
            return False
        return True

    async def select(
        self, kind: str, namespace: str | None, selector: str, *, limit: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object matching ``selector`` (all pages) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page_args = {"label_selector": selector, "limit": limit}
            if token:
                page_args["_continue"] = token
            page = await self._json("list", kind, namespace, None, self._args(kind, namespace), **page_args)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion") or "")

    async def exists(self, kind: str, namespace: str | None, selector: str) -> bool:
        """Whether at least one object matches (one request of one item)."""
        page = await self._json(
            "list", kind, namespace, None, self._args(kind, namespace), label_selector=selector, limit=1
        )
        return bool(page.get("items"))

    # -- streams ---------------------------------------------------------------------------------------

    async def watch(
        self, kind: str, namespace: str | None, selector: str, resource_version: str, server_timeout: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (dicts with ``type`` and ``object``) until the server ends the stream.

        An ERROR event with code 410 raises :class:`KubeGoneError`; a stream that goes silent longer than
        the server's own timeout (plus a margin) raises TimeoutError.
        """
        kwargs = {
            "label_selector": selector,
            "watch": True,
            "resource_version": resource_version,
            "timeout_seconds": server_timeout,
            "allow_watch_bookmarks": True,
            "_request_timeout": aiohttp.ClientTimeout(
                connect=self._options.request_timeout, sock_read=server_timeout + 30
            ),
        }
        response = await self._open("watch", kind, namespace, None, self._args(kind, namespace), kwargs)
        try:
            async for line in _lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise _error_event("watch", kind, namespace, event.get("object") or {})
                yield event
        finally:
            response.release()

    async def log(
        self, namespace: str, pod: str, container: str, *, follow: bool = False, tail_lines: int | None = None
    ) -> AsyncIterator[bytes]:
        """The container's log as chunks of bytes (following it while the container runs)."""
        kwargs: dict[str, Any] = {"container": container, "follow": follow}
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        # A followed log may stay quiet for as long as the worker does; a plain read may not.
        timeout = self._options.request_timeout
        kwargs["_request_timeout"] = aiohttp.ClientTimeout(
            connect=timeout, sock_read=None if follow else timeout
        )
        where_name = f"{pod}/{container}"
        response = await self._open(
            "log", "Pod", namespace, where_name, [pod, namespace], kwargs, method="read_namespaced_pod_log"
        )
        try:
            async for chunk in response.content.iter_chunked(64 * 1024):
                yield chunk
        finally:
            response.release()

    # -- plumbing --------------------------------------------------------------------------------------

    def _args(self, kind: str, namespace: str | None) -> list[str]:
        return [namespace] if namespace is not None and KINDS[kind].namespaced else []

    def _method(self, verb: str, kind: str, namespace: str | None) -> Any:
        spec = KINDS[kind]
        api_verb = "list" if verb == "watch" else verb
        if not spec.namespaced:
            name = f"{api_verb}_{spec.snake}"
        elif namespace is None:
            name = f"{api_verb}_{spec.snake}_for_all_namespaces"
        else:
            name = f"{api_verb}_namespaced_{spec.snake}"
        return getattr(self._apis[spec.api], name)

    async def _json(
        self, verb: str, kind: str, namespace: str | None, name: str | None, args: list[Any], **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.setdefault("_request_timeout", self._options.request_timeout)
        response = await self._open(verb, kind, namespace, name, args, kwargs)
        try:
            data: dict[str, Any] = await response.json(content_type=None)
            return data
        finally:
            response.release()

    async def _open(
        self,
        verb: str,
        kind: str,
        namespace: str | None,
        name: str | None,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        method: str | None = None,
    ) -> Any:
        """The response of one request (status < 400), after rate limiting and retries."""
        call = getattr(self._apis["core"], method) if method else self._method(verb, kind, namespace)
        where = f"{namespace + '/' if namespace else ''}{name or '*'}"
        attempts = self._options.retries + 1
        for attempt in range(1, attempts + 1):
            await self._bucket.take()
            delay: float | None = None
            try:
                response = await call(*args, _preload_content=False, **kwargs)
            except (aiohttp.ClientError, TimeoutError) as e:
                if attempt == attempts:
                    raise KubeApiError(
                        verb, kind, where, 0, type(e).__name__, "the API server is unreachable"
                    ) from e
            else:
                if response.status < 400:
                    return response
                error = await _error_response(verb, kind, where, response)
                if response.status not in _TRANSIENT_STATUS or attempt == attempts:
                    raise error
                delay = _retry_after(response)
            delay = delay if delay is not None else self._backoff(attempt)
            log.warning("kubernetes_request_retried", verb=verb, kind=kind, where=where, attempt=attempt)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return backoff(attempt, base=0.2, cap=self._options.retry_max_delay, jitter=(0.8, 1.2))


async def _configuration(connection: Connection) -> Any:
    configuration = client.Configuration()
    if connection.api_url:
        configuration.host = connection.api_url.rstrip("/")
        configuration.verify_ssl = connection.verify_ssl
        if connection.token:
            configuration.api_key = {"BearerToken": connection.token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration
    if connection.kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
        except ConfigException:
            pass
    try:
        await config.load_kube_config(
            config_file=connection.kubeconfig, context=connection.context, client_configuration=configuration
        )
    except (ConfigException, OSError) as e:
        raise WorkflowBackendError(
            f"no Kubernetes configuration: not in a cluster and no kubeconfig ({e})"
        ) from e
    return configuration


async def _lines(response: Any) -> AsyncIterator[bytes]:
    """Newline-separated lines of any length (aiohttp's readline refuses long ones)."""
    pending = b""
    async for chunk in response.content.iter_any():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


async def _error_response(verb: str, kind: str, where: str, response: Any) -> KubeApiError:
    try:
        body = (await response.content.read(_MAX_ERROR_BODY)).decode("utf-8", errors="replace")
    finally:
        response.release()
    try:
        status = json.loads(body)
    except json.JSONDecodeError:
        status = {}
    reason = str(status.get("reason") or response.reason or "")
    detail = "" if kind == "Secret" else str(status.get("message") or "")[:500]
    return _error(verb, kind, where, int(response.status), reason, detail)


def _error_event(verb: str, kind: str, namespace: str | None, status: dict[str, Any]) -> KubeApiError:
    where = f"{namespace or '*'}/*"
    code = int(status.get("code") or 500)
    return _error(
        verb, kind, where, code, str(status.get("reason") or ""), str(status.get("message") or "")[:500]
    )


def _error(verb: str, kind: str, where: str, status: int, reason: str, detail: str) -> KubeApiError:
    cls = {404: KubeNotFoundError, 409: KubeConflictError, 410: KubeGoneError}.get(status, KubeApiError)
    return cls(verb, kind, where, status, reason, detail)


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(30.0, float(value)) if value else None
    except ValueError:
        return None
