"""One label-selected watch over the Pods of the backend's namespace (or of every namespace).

List, then watch from the list's resourceVersion; each event moves the resourceVersion on (bookmarks
too). The watch asks the server to end the stream after ``timeout`` seconds, and is then resumed from
where it was, so it never runs into a load balancer's or the server's own limit. A 410 Gone (the
resourceVersion was compacted away) or an error event starts over with a fresh list; the list is handed
over whole so the owner can notice Pods that vanished while nobody watched. Connection failures are
retried with backoff, resuming from the last resourceVersion. No per-job request is ever made here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from backends.backoff import backoff
from backends.workflow.kubernetes.api import KubeApi, KubeGoneError

log = structlog.get_logger("wml.workflow.kubernetes")

OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
OnList = Callable[[list[dict[str, Any]]], Awaitable[None]]


class PodWatcher:
    def __init__(
        self,
        api: KubeApi,
        namespace: str | None,
        selector: str,
        *,
        on_event: OnEvent,
        on_list: OnList,
        timeout: int,
        max_delay: float = 30.0,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._selector = selector
        self._on_event = on_event
        self._on_list = on_list
        self._timeout = timeout
        self._max_delay = max_delay
        self.synced = asyncio.Event()  # set after the first list was handed over
        self.lists = 0  # how often it listed (the first time, then after each 410)
        self.resumes = 0  # how often a watch stream was resumed from a resourceVersion

    async def run(self) -> None:
        """Forever: list, watch, resume; only cancellation ends it."""
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    items, listed = await self._api.select("Pod", self._namespace, self._selector)
                    self.lists += 1
                    await self._on_list(items)
                    version = listed  # only once the whole list was handed over
                    self.synced.set()
                else:
                    self.resumes += 1
                version = await self._follow(version)
                failures = 0
            except KubeGoneError:
                log.info("kubernetes_watch_expired_relisting", namespace=self._namespace or "*")
                version = None
            except Exception as e:
                # Dropped connections, payload errors, silence past the timeout, a proxy's error page:
                # resume from the last resourceVersion after a pause.
                failures += 1
                delay = backoff(min(failures, 10) + 1, base=0.1, cap=self._max_delay, jitter=(0.5, 1.0))
                log.warning(
                    "kubernetes_watch_failed", error=f"{type(e).__name__}: {e}", retry_in=round(delay, 2)
                )
                await asyncio.sleep(delay)

    async def _follow(self, version: str) -> str:
        """Stream events from ``version`` until the server ends the stream; the version reached."""
        stream = self._api.watch("Pod", self._namespace, self._selector, version, self._timeout)
        async for event in stream:
            meta = (event.get("object") or {}).get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            kind = event.get("type", "")
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                await self._on_event(kind, event["object"])
        return version
