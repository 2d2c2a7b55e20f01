"""Following jobs live: a job's (or all of a caller's jobs') events, replayed then followed, and its logs.

Replay-then-follow has no gap and no duplicate because the bus subscription is opened *before* the
store is read: every event committed after the read is in the subscription's queue, and every event
committed before it is in the read. Queued events at or below the last ``seq`` delivered are skipped.
Scope is the caller's, as for queries: another consumer's job is answered like an unknown one. The
grant is checked again on every event and every few seconds, and a revoked grant ends its streams at
once (the bus tells them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import WorkflowBackend
from core.auth import Principal, grant_is_usable
from core.errors import DomainError, NotFoundError
from core.events import AccessRevoked, EventBus, SubscriberTooSlow, Subscription
from core.models import Job, JobEvent
from core.store import Store

REPLAY_BATCH = 500
LOG_CHUNK_LIMIT = 64 * 1024  # a saved log line longer than this is passed on in pieces


class SubscriberTooSlowError(DomainError):
    code = "SUBSCRIBER_TOO_SLOW"

    def __init__(self, last_seq: int) -> None:
        super().__init__(f"subscriber too slow; resume with since={last_seq}")
        self.last_seq = last_seq


class AccessRevokedError(DomainError):
    code = "ACCESS_REVOKED"

    def __init__(self) -> None:
        super().__init__("access revoked: the token's grant is no longer active")


class JobStreams:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        backend: WorkflowBackend,
        storage: StorageBackend,
        *,
        recheck_interval: float = 5.0,
    ) -> None:
        self._store = store
        self._bus = bus
        self._backend = backend
        self._storage = storage
        self._recheck = recheck_interval  # how often a quiet stream checks that its grant still holds

    # -- access ----------------------------------------------------------------------------------------

    async def check_access(self, principal: Principal) -> None:
        """Raise :class:`AccessRevokedError` when one of the principal's grants stopped being usable."""
        if principal.is_operator:
            return
        for grant_id in principal.grant_ids:
            grant = await self._store.get_grant(grant_id)
            if grant is None or not grant_is_usable(grant):
                raise AccessRevokedError()

    async def _job(self, principal: Principal, job_id: str) -> Job:
        job = await self._store.get_job(job_id)
        if job is None or not principal.may_see(job.grant_id):
            raise NotFoundError("job", job_id)
        return job

    def _subscribe(self, principal: Principal, predicate: Callable[[JobEvent], bool]) -> Subscription:
        grant_ids = None if principal.is_operator else principal.grant_ids
        return self._bus.subscribe(predicate, grant_ids=grant_ids)

    # -- events ----------------------------------------------------------------------------------------

    async def events(
        self, principal: Principal, job_id: str | None, since: int | None
    ) -> AsyncIterator[JobEvent]:
        """One job's events (from its first, or after ``since``) until its terminal event; or, without
        ``job_id``, every event of the caller's jobs after ``since`` (default: from now on), endlessly."""
        await self.check_access(principal)
        if job_id is None:
            predicate: Callable[[JobEvent], bool] = lambda e: principal.may_see(e.grant_id)  # noqa: E731
        else:
            predicate = lambda e: e.job_id == job_id  # noqa: E731
        with self._subscribe(principal, predicate) as sub:
            job = await self._job(principal, job_id) if job_id is not None else None
            last = since if since is not None else (0 if job_id else await self._store.last_event_seq())
            while batch := await self._store.events_after(
                last, job_id=job_id, grant_ids=principal.grant_scope, limit=REPLAY_BATCH
            ):
                for event in batch:
                    yield event
                    last = event.seq
                    if job_id is not None and event.state.terminal:
                        return
            if job is not None and job.state.terminal:
                return  # it ended before the replay was read: everything it had is delivered
            async for event in self._follow(principal, sub, job_id, last):
                yield event

    async def _follow(
        self, principal: Principal, sub: Subscription, job_id: str | None, last: int
    ) -> AsyncIterator[JobEvent]:
        while True:
            try:
                event = await sub.get(within=self._recheck)
            except SubscriberTooSlow:
                raise SubscriberTooSlowError(last) from None
            except AccessRevoked:
                raise AccessRevokedError() from None
            await self.check_access(principal)
            if event is None:
                if job_id is not None and await self._store.get_job(job_id) is None:
                    return  # deleted meanwhile
                continue
            if event.seq <= last:
                continue  # already delivered by the replay
            yield event
            last = event.seq
            if job_id is not None and event.state.terminal:
                return

    # -- logs ------------------------------------------------------------------------------------------

    async def logs(self, principal: Principal, job_id: str, *, follow: bool) -> AsyncIterator[str]:
        """The job's log lines: the saved log once it ended; while it runs, the backend's log so far and
        (with ``follow``) its new lines until the run ends. A queued job is waited for."""
        await self.check_access(principal)
        job = await self._job(principal, job_id)
        with self._subscribe(principal, lambda e: e.job_id == job_id) as sub:
            while not job.state.terminal and job.backend_ref is None and follow:
                await self._wait_for_change(principal, sub)
                job = await self._job(principal, job_id)
            if job.state.terminal:
                lines = self._saved_log(job)
            elif job.backend_ref is not None:
                lines = self._backend.logs(job.backend_ref, follow=follow)
            else:
                return
            async for line in self._guarded(principal, lines):
                yield line

    async def _wait_for_change(self, principal: Principal, sub: Subscription) -> None:
        try:
            await sub.get(within=self._recheck)
        except AccessRevoked:
            raise AccessRevokedError() from None
        except SubscriberTooSlow:
            pass  # only a wake-up call here; the job is read again anyway
        await self.check_access(principal)

    async def _saved_log(self, job: Job) -> AsyncIterator[str]:
        record = await self._store.get_file(job.log_file_id) if job.log_file_id else None
        if record is None:
            return
        pending = b""
        try:
            async for chunk in self._storage.get(record.storage_key):
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) > LOG_CHUNK_LIMIT:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
        except StorageError:
            return  # removed meanwhile (the job was deleted)
        if pending:
            yield pending.decode("utf-8", errors="replace")

    async def _guarded(self, principal: Principal, lines: AsyncIterator[str]) -> AsyncIterator[str]:
        """Pass ``lines`` on until they end, or the principal's grant is revoked (even while quiet)."""
        revoked = asyncio.Event()
        unregister = self._bus.on_revocation(principal.grant_ids, revoked.set)
        try:
            while True:
                nxt: asyncio.Future[str] = asyncio.ensure_future(anext(lines))
                try:
                    while not nxt.done():
                        stop = asyncio.ensure_future(revoked.wait())
                        racing: list[asyncio.Future[Any]] = [nxt, stop]
                        await asyncio.wait(racing, timeout=self._recheck, return_when=asyncio.FIRST_COMPLETED)
                        stop.cancel()
                        if revoked.is_set():
                            raise AccessRevokedError()
                        if not nxt.done():
                            await self.check_access(principal)
                finally:
                    if not nxt.done():
                        nxt.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await nxt
                try:
                    line = nxt.result()
                except StopAsyncIteration:
                    return
                yield line
        finally:
            unregister()
            with contextlib.suppress(RuntimeError):
                await lines.aclose()  # type: ignore[attr-defined]
