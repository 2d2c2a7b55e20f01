"""Following jobs live: a job's (or all of a caller's jobs') events, replayed then followed, and its logs.

Replay-then-follow has no gap and no duplicate because the bus subscription is opened *before* the
store is read: every event committed after the read is in the subscription's queue, and every event
committed before it is in the read. Queued events at or below the last ``seq`` delivered are skipped.
Scope is the caller's, as for queries: another consumer's job is answered like an unknown one. The
grant is checked again on every event and every few seconds, and a revoked grant ends its streams at
once (the bus tells them).

Many subscribers must not mean many queries, nor many timers: the reads streams make are shared
(``core.live.shared_reads``). A grant or a job's existence read by one stream serves every stream for
``recheck_interval`` seconds, concurrent identical reads are one query, and the periodic re-check of
quiet streams is one read per grant in use (:class:`GrantWatch`), which ends them through the bus.
With an :class:`OrderedEventBus` (every server), a stream starts at the bus's position instead of
reading the store: every event after it reaches the new subscription through the bus, so only a resume
from before it replays anything. A database too busy to answer in time ends a stream with
``UNAVAILABLE`` (retry with ``since``), not an internal error.

Many subscribers must not mean many task wake-ups either: a following event stream given a ``deliver``
callback (the GraphQL layer's write of the event to the socket) lets the bus hand it each live event
during the fan-out while the stream waits with nothing queued, when that is safe to do without the
stream's task: already delivered (skipped), or a non-terminal event for a caller whose grant is known to
be usable (asked once per event and grant, however many subscribers the grant has). Anything else (a
terminal event, a grant to read again, a socket that cannot take it now) is queued and the task handles
it as before, so order, the last ``seq`` and every ending stay the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import WorkflowBackend
from core.auth import Principal, grant_is_usable
from core.errors import DomainError, NotFoundError
from core.live.bus import AccessRevoked, EventBus, SubscriberTooSlow, Subscription
from core.live.shared_reads import DatabaseBusyError, GrantWatch, SharedReads, busy_is_typed
from core.models import Job, JobEvent
from core.states import JobState
from core.store import Store

__all__ = ["AccessRevokedError", "DatabaseBusyError", "JobStreams", "SubscriberTooSlowError"]

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


class _Cursor:
    """The last ``seq`` a stream delivered, shared by its task and the fan-out's direct deliveries."""

    __slots__ = ("last",)

    def __init__(self, last: int) -> None:
        self.last = last


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
        self._reads = SharedReads(max_age=recheck_interval)
        self._watch = GrantWatch(store, bus, self._reads, recheck_interval)
        # The event being fanned out, and whether each grant asked about during it is known usable.
        self._usable_during: tuple[JobEvent | None, dict[str, bool]] = (None, {})
        bus.on_any_revocation(lambda grant_id: self._reads.forget(("grant", grant_id)))

    # -- access ----------------------------------------------------------------------------------------

    async def check_access(self, principal: Principal) -> None:
        """Raise :class:`AccessRevokedError` when one of the principal's grants stopped being usable."""
        if principal.is_operator:
            return
        for grant_id in principal.grant_ids:
            key = ("grant", grant_id)
            known, grant = self._reads.peek(key)  # every event checks: no coroutine when it is known
            if not known:
                grant = await self._reads.recent(key, partial(self._store.grants.get_grant, grant_id))
            if grant is None or not grant_is_usable(grant):
                raise AccessRevokedError()

    async def _job(self, principal: Principal, job_id: str, position: int | None = None) -> Job:
        """The job, read after the stream subscribed (or shared with a read that began at the same
        bus position, which is as good); NotFound when the caller may not see it."""
        if position is None:
            job = await busy_is_typed(self._store.jobs.get_job(job_id))
        else:
            job = await self._reads.once(("job", job_id, position), partial(self._store.jobs.get_job, job_id))
        if job is None or not principal.may_see(job.grant_id):
            raise NotFoundError("job", job_id)
        return job

    async def _job_gone(self, job_id: str) -> bool:
        job = await self._reads.recent(("job-exists", job_id), partial(self._store.jobs.get_job, job_id))
        return job is None

    @contextlib.contextmanager
    def _subscribe(
        self, principal: Principal, predicate: Callable[[JobEvent], bool]
    ) -> Iterator[Subscription]:
        """A bus subscription whose grants the watch re-checks while it is open."""
        grant_ids = None if principal.is_operator else principal.grant_ids
        with (
            self._bus.subscribe(predicate, grant_ids=grant_ids) as sub,
            self._watch.watching(grant_ids or ()),
        ):
            yield sub

    # -- events ----------------------------------------------------------------------------------------

    async def events(
        self,
        principal: Principal,
        job_id: str | None,
        since: int | None,
        deliver: Callable[[JobEvent], bool] | None = None,
    ) -> AsyncIterator[JobEvent]:
        """One job's events (from its first, or after ``since``) until its terminal event; or, without
        ``job_id``, every event of the caller's jobs after ``since`` (default: from now on), endlessly."""
        await self.check_access(principal)
        if job_id is None:
            predicate: Callable[[JobEvent], bool] = lambda e: principal.may_see(e.grant_id)  # noqa: E731
        else:
            predicate = lambda e: e.job_id == job_id  # noqa: E731
        with self._subscribe(principal, predicate) as sub:
            # Every event after the bus's position reaches ``sub``; None: a bus that cannot tell.
            position = self._bus.position
            job = await self._job(principal, job_id, position) if job_id is not None else None
            if since is not None:
                last = since
            elif job_id is not None:
                last = 0
            elif position is not None:
                last = position
            else:
                last = await busy_is_typed(self._store.events.last_event_seq())
            async with contextlib.aclosing(self._replay(principal, job_id, last, position)) as replay:
                async for event in replay:
                    yield event
                    last = event.seq
                    if job_id is not None and event.state.terminal:
                        return
            if job is not None and job.state.terminal:
                if position is not None:
                    # It ended before it was read, but a shared replay may have begun before that read:
                    # one fresh read delivers what it may have missed (the terminal event).
                    async with contextlib.aclosing(self._replay(principal, job_id, last, None)) as rest:
                        async for event in rest:
                            yield event
                return  # everything it had is delivered
            async for event in self._follow(principal, sub, job_id, last, deliver):
                yield event

    async def _replay(
        self, principal: Principal, job_id: str | None, last: int, position: int | None
    ) -> AsyncGenerator[JobEvent, None]:
        """The stored events after ``last`` up to ``position`` at least (all of them when None). Reads
        made for the same position are shared: each began after the bus reached it."""
        scope = principal.grant_scope
        while position is None or last < position:
            read = partial(
                self._store.events.events_after, last, job_id=job_id, grant_ids=scope, limit=REPLAY_BATCH
            )
            if position is None:
                batch = await busy_is_typed(read())
            else:
                key = ("replay", last, job_id, tuple(scope) if scope is not None else None, position)
                batch = await self._reads.once(key, read)
            for event in batch:
                yield event
                last = event.seq
            if len(batch) < REPLAY_BATCH:
                return

    async def _follow(
        self,
        principal: Principal,
        sub: Subscription,
        job_id: str | None,
        last: int,
        deliver: Callable[[JobEvent], bool] | None,
    ) -> AsyncIterator[JobEvent]:
        # A quiet stream of all jobs waits without a timer: the watch ends it if its grant goes. A
        # job's stream also wakes now and then to notice that the job was deleted.
        within = self._recheck if job_id is not None else None
        cursor = _Cursor(last)
        if deliver is not None:
            sub.direct = partial(self._deliver_now, principal, job_id, cursor, deliver)
        try:
            while True:
                try:
                    event = await sub.get(within=within)
                except SubscriberTooSlow:
                    raise SubscriberTooSlowError(cursor.last) from None
                except AccessRevoked:
                    raise AccessRevokedError() from None
                await self.check_access(principal)
                if event is None:
                    if job_id is not None and await self._job_gone(job_id):
                        return  # deleted meanwhile
                    continue
                if event.seq <= cursor.last:
                    continue  # already delivered (by the replay, or during the fan-out)
                yield event
                cursor.last = event.seq
                if job_id is not None and event.state.terminal:
                    return
        finally:
            sub.direct = None

    def _deliver_now(
        self,
        principal: Principal,
        job_id: str | None,
        cursor: _Cursor,
        deliver: Callable[[JobEvent], bool],
        event: JobEvent,
    ) -> bool:
        """The fan-out's delivery of a live event without the stream's task (False: queue it)."""
        if event.seq <= cursor.last:
            return True  # already delivered
        if job_id is not None and event.state.terminal:
            return False  # the stream ends after it: the task sends it, then ``complete``
        if not self._access_known_usable(principal, event) or not deliver(event):
            return False
        cursor.last = event.seq
        return True

    def _access_known_usable(self, principal: Principal, event: JobEvent) -> bool:
        """Whether every grant of the principal is known (without a read) to be usable; asked once per
        grant while ``event`` is fanned out, the answer serving all of that grant's subscribers."""
        if principal.is_operator:
            return True
        during, usable = self._usable_during
        if during is not event:
            usable = {}
            self._usable_during = (event, usable)
        for grant_id in principal.grant_ids:
            known_usable = usable.get(grant_id)
            if known_usable is None:
                known, grant = self._reads.peek(("grant", grant_id))
                known_usable = usable[grant_id] = known and grant is not None and grant_is_usable(grant)
            if not known_usable:
                return False
        return True

    # -- logs ------------------------------------------------------------------------------------------

    async def logs(self, principal: Principal, job_id: str, *, follow: bool) -> AsyncIterator[str]:
        """The job's log lines: the saved log once it ended; while it runs, the backend's log so far and
        (with ``follow``) its new lines until the run ends. Following a job whose worker has not started
        (QUEUED, INITIALIZING) waits for it."""
        await self.check_access(principal)
        job = await self._job(principal, job_id)
        with self._subscribe(principal, lambda e: e.job_id == job_id) as sub:
            # No worker line exists before the worker runs, and an INITIALIZING job's reference may
            # name a run its backend does not have yet: a follower waits for RUNNING (or the end).
            while follow and job.state in (JobState.QUEUED, JobState.INITIALIZING):
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
        record = await self._store.files.get_file(job.log_file_id) if job.log_file_id else None
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
