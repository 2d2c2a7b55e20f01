"""A small fake Kubernetes API server on loopback (Starlette + uvicorn), for the Kubernetes backend's tests.

Why not kmock (TESTING.md's suggestion): 0.8 answers every list with ``resourceVersion: "..."``, replays
every object as ADDED on each watch instead of resuming from a resourceVersion, knows no 410, label
selectors, ``timeoutSeconds``, ``pods/log`` or garbage collection; patching all of that in a subclass
would replace most of it. This server does exactly what the backend uses, over real HTTP, so the backend
runs its real kubernetes_asyncio client against it:

- core/v1 pods, secrets, resourcequotas, namespaces; batch/v1 jobs; networking.k8s.io/v1 networkpolicies:
  create (POST), get, list (``labelSelector``, ``limit``/``continue``), delete (``propagationPolicy``),
  merge-patch; no PUT;
- watch (``watch=true`` or ``True``) with ``resourceVersion``, ``labelSelector``, ``timeoutSeconds``,
  bookmarks, and 410 Gone (an ERROR event) for a compacted version; namespaced and all-namespaces;
- ``pods/{name}/log`` (``container``, ``follow``, ``tailLines``) from logs the test (or the fake kubelet)
  writes.

Tests can count requests (:attr:`FakeKubernetes.requests`), make requests fail (:meth:`fail_next`), act
just before a request is served (:meth:`before_next`: to put something in between a client's requests),
end or break every open watch, and compact the history. The state lives in kube_state.py.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.kube_state import KINDS, ApiError, KubeState, matches


@dataclass(frozen=True)
class Call:
    method: str  # GET, POST, DELETE, PATCH, WATCH (a GET with watch=true), LOG
    plural: str  # pods, jobs, ... (pods/log for LOG)
    namespace: str | None
    name: str | None
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class _Failure:
    method: str
    plural: str
    status: int
    times: int
    retry_after: str | None


class FakeKubernetes:
    def __init__(self) -> None:
        self.state = KubeState()
        self.requests: list[Call] = []
        self._failures: list[_Failure] = []
        self._before: list[tuple[str, str, Callable[[], Awaitable[None]]]] = []
        self._generation = 0  # bumped to end every open watch cleanly
        self._breaks = 0  # bumped to break every open watch (the connection drops mid-stream)
        self.url = ""
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "DELETE", "PATCH", "PUT"])]
        )

    # -- test controls ---------------------------------------------------------------------------------

    def fail_next(
        self, method: str, plural: str, status: int, *, times: int = 1, retry_after: str | None = None
    ) -> None:
        self._failures.append(_Failure(method, plural, status, times, retry_after))

    def before_next(self, method: str, plural: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` once, before serving the next ``method`` request for ``plural``."""
        self._before.append((method, plural, action))

    def end_watches(self) -> None:
        """Every open watch ends as if its timeoutSeconds had passed."""
        self._generation += 1
        self.state._wake()

    def break_watches(self) -> None:
        """Every open watch connection drops in the middle of the stream."""
        self._breaks += 1
        self.state._wake()

    def count(self, method: str | None = None, plural: str | None = None) -> int:
        return sum(1 for c in self.requests if (method in (None, c.method)) and (plural in (None, c.plural)))

    # -- HTTP ------------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        try:
            call = _parse(request)
        except ApiError as e:
            return JSONResponse(e.status(), status_code=e.code)
        self.requests.append(call)
        hook = next((h for h in self._before if h[:2] == (call.method, call.plural)), None)
        if hook is not None:
            self._before.remove(hook)
            await hook[2]()
        failure = next(
            (f for f in self._failures if f.method == call.method and f.plural == call.plural), None
        )
        if failure is not None:
            failure.times -= 1
            if failure.times <= 0:
                self._failures.remove(failure)
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
            status = ApiError(failure.status, "Injected", "injected by the test").status()
            return JSONResponse(status, status_code=failure.status, headers=headers)
        try:
            return await self._serve(call, request)
        except ApiError as e:
            return JSONResponse(e.status(), status_code=e.code)

    async def _serve(self, call: Call, request: Request) -> Response:
        state = self.state
        if call.method == "WATCH":
            return StreamingResponse(self._watch(call), media_type="application/json")
        if call.method == "LOG":
            return await self._log(call)
        if call.method == "POST":
            return JSONResponse(
                state.create(call.plural, call.namespace, await request.json()), status_code=201
            )
        if call.method == "PATCH":
            if request.headers.get("content-type", "").split(";")[0] != "application/merge-patch+json":
                raise ApiError(415, "UnsupportedMediaType", "only application/merge-patch+json is served")
            return JSONResponse(
                state.patch(call.plural, call.namespace, call.name or "", await request.json())
            )
        if call.method == "DELETE":
            body = await request.body()
            propagation = call.query.get("propagationPolicy") or (json.loads(body) if body else {}).get(
                "propagationPolicy"
            )
            state.delete(call.plural, call.namespace, call.name or "", propagation)
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
        if call.method == "PUT":
            raise ApiError(405, "MethodNotAllowed", "no PUT here: use a merge patch")
        if call.name is not None:
            obj = state.get(call.plural, call.namespace, call.name)
            if obj is None:
                raise ApiError(404, "NotFound", f'{call.plural} "{call.name}" not found')
            return JSONResponse(obj)
        return JSONResponse(self._list(call))

    def _list(self, call: Call) -> dict[str, Any]:
        kind, api_version, _ = KINDS[call.plural]
        items = self.state.select(call.plural, call.namespace, call.query.get("labelSelector"))
        for item in items:  # list items carry no kind, like the real API's
            item.pop("kind", None)
            item.pop("apiVersion", None)
        start = int(call.query.get("continue") or 0)
        limit = int(call.query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.state.version)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return {"kind": f"{kind}List", "apiVersion": api_version, "metadata": meta, "items": page}

    async def _watch(self, call: Call) -> AsyncIterator[bytes]:
        state, selector = self.state, call.query.get("labelSelector")
        version = call.query.get("resourceVersion") or "0"
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + float(call.query.get("timeoutSeconds") or 1800)
        generation, breaks = self._generation, self._breaks
        if version != "0" and int(version) < state.compacted:
            error = ApiError(410, "Expired", f"too old resource version: {version} ({state.compacted})")
            yield _line({"type": "ERROR", "object": error.status()})
            return
        if version == "0":
            for obj in state.select(call.plural, call.namespace, selector):
                yield _line({"type": "ADDED", "object": obj})
            version = str(state.version)
        seen = int(version)
        while True:
            if self._breaks != breaks:  # before sending anything that happened after the break
                raise ConnectionResetError("the test dropped the watch")
            if self._generation != generation:  # ended: what is left comes on the resumed watch
                return
            history = state.history  # in version order: start after the last version sent
            start = bisect.bisect_right(history, seen, key=lambda entry: entry[0])
            for at, plural, kind, obj in history[start:]:
                seen = at
                if plural != call.plural or call.namespace not in (None, obj["metadata"].get("namespace")):
                    continue
                if matches(obj["metadata"].get("labels") or {}, selector):
                    yield _line({"type": kind, "object": obj})
            seen = max(seen, state.compacted)
            if loop.time() >= ends_at:
                return

            def news(seen: int = seen) -> bool:
                return state.version > seen or self._breaks != breaks or self._generation != generation

            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose the cancel that ends this
            # stream when the server stops (see core/waiting.py), and the loop would go on.
            async with state.changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.01, ends_at - loop.time())):
                        await state.changed.wait_for(news)

    async def _log(self, call: Call) -> Response:
        namespace, name, container = call.namespace or "", call.name or "", call.query.get("container", "")
        pod = self.state.get("pods", namespace, name)
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        statuses = [
            *(pod["status"].get("initContainerStatuses") or []),
            *(pod["status"].get("containerStatuses") or []),
        ]
        status = next((s for s in statuses if s["name"] == container), None)
        if status is None or not ({"running", "terminated"} & set(status.get("state") or {})):
            raise ApiError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start')
        key = (namespace, name, container)
        tail = call.query.get("tailLines")
        if call.query.get("follow", "").lower() not in ("true", "1"):
            data = bytes(self.state.logs[key].data) if key in self.state.logs else b""
            if tail is not None:
                data = b"".join(data.splitlines(keepends=True)[-int(tail) :])
            return Response(data, media_type="text/plain")
        return StreamingResponse(self._follow_log(key), media_type="text/plain")

    async def _follow_log(self, key: tuple[str, str, str]) -> AsyncIterator[bytes]:
        state, offset = self.state, 0
        while True:
            buffer = state.logs.get(key)
            if buffer is not None and len(buffer.data) > offset:
                chunk = bytes(buffer.data[offset:])
                offset += len(chunk)
                yield chunk
                continue
            gone = ("pods", key[0], key[1]) not in state.objects
            if gone or (buffer is not None and buffer.closed):
                return

            def news(offset: int = offset) -> bool:
                buffer = state.logs.get(key)
                gone = ("pods", key[0], key[1]) not in state.objects
                return gone or (buffer is not None and (len(buffer.data) > offset or buffer.closed))

            async with state.changed:
                await state.changed.wait_for(news)

    # -- serving ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeKubernetes]:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self.end_watches()
            server.should_exit = True
            server.force_exit = True
            await task


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"


def _parse(request: Request) -> Call:
    """Which resource a URL names: /api/v1/..., /apis/GROUP/VERSION/..., namespaced or not."""
    parts = [p for p in request.url.path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        rest = parts[3:]
    else:
        raise ApiError(404, "NotFound", "no such API")
    query = dict(request.query_params)
    namespace: str | None = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    if plural not in KINDS:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {plural}")
    method = request.method
    if sub == "log":
        method, plural = "LOG", "pods/log"
    elif method == "GET" and name is None and query.get("watch", "").lower() in ("true", "1"):
        method = "WATCH"
    return Call(method, plural, namespace, name, query)
