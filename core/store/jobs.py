"""The job repository: job reads and writes, and state transitions with the events they write.

State changes go through :meth:`JobRepository.transition`, which checks the transition table, updates the job
only if nobody changed it meanwhile (compare-and-set on the state), and writes the JobEvent in the same
transaction. On PostgreSQL that transaction also takes a transaction-level advisory lock before it
allocates the event's ``seq`` and sends a NOTIFY (delivered by PostgreSQL only when it commits), so
``seq`` order is commit order and other replicas hear of every event; see :meth:`JobRepository._add_event`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, false, func, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col, select

from core.models import FileRecord, Job, JobEvent, Page, utcnow
from core.states import TERMINAL_STATES, JobState, can_transition
from core.store.base import Repository
from core.store.rows import file_fields, job_fields, job_record, storable
from core.store.tables import FileRow, JobEventRow, JobRow, JobTagRow

# The advisory lock that serialises event inserts on PostgreSQL, and the channel that announces them.
EVENT_LOCK_KEY = 0x776D6C_5E0
EVENTS_CHANNEL = "wml_job_events"
LIVE_STATES = [s.value for s in JobState if s not in TERMINAL_STATES]
# States that hold backend capacity.
ACTIVE_STATES = [JobState.INITIALIZING.value, JobState.RUNNING.value, JobState.CANCELING.value]
# The hot paths (transitions, job creation, the supervisor's reads) use Core statements on these tables:
# no ORM identity map or unit of work for rows that are turned into records at once anyway.
_JOB: Table = JobRow.__table__  # type: ignore[attr-defined]
_EVENT: Table = JobEventRow.__table__  # type: ignore[attr-defined]
_FILE: Table = FileRow.__table__  # type: ignore[attr-defined]
_TAG: Table = JobTagRow.__table__  # type: ignore[attr-defined]
MAX_MESSAGE_BYTES = 4096
_CUT = b" [...]"
_EVENT_FIELDS = ("job_id", "consumer_id", "grant_id", "reason", "message", "exit_code", "created_at")


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition writes besides the state: see :meth:`JobRepository.transition`."""

    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    new_files: Sequence[FileRecord] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


def bounded_message(message: str | None) -> str | None:
    """A message as stored on a job and its event: at most MAX_MESSAGE_BYTES of UTF-8 (a backend's message
    may quote what a consumer sent, an archive member's name for one; every subscriber gets a copy)."""
    if message is None or len(message) <= MAX_MESSAGE_BYTES // 4:
        return message
    encoded = message.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_MESSAGE_BYTES:
        return message
    cut = encoded[: MAX_MESSAGE_BYTES - len(_CUT)].decode("utf-8", errors="ignore")
    return cut + _CUT.decode()


def _transition_values(target: JobState, now: datetime, change: Change) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": target.value,
        "reason": change.reason,
        "message": bounded_message(change.message),
        "updated_at": now,
        **change.fields,
    }
    if change.exit_code is not None:
        values["exit_code"] = change.exit_code
    if target.terminal:
        values["finished_at"] = now
        values["deadline_at"] = None
    return values


class JobRepository(Repository):
    """Jobs, their transitions, and the events those write (read through the event repository)."""

    # -- jobs ------------------------------------------------------------------------------------------

    async def insert_job(self, job: Job) -> JobEvent:
        """Persist a new job and its first event in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(_JOB).values(**job_fields(job)))
            tags = [{"job_id": job.id, "key": k, "value": v} for k, v in job.details.tags.items()]
            if tags:
                await conn.execute(insert(_TAG), tags)
            return await self._add_event(conn, job, job.created_at)

    async def get_job(self, job_id: str) -> Job | None:
        if not storable(job_id):
            return None
        async with self.session() as s:
            row = await s.get(JobRow, job_id)
            return job_record(row) if row else None

    async def job_by_ref(self, ref: str) -> Job | None:
        async with self.session() as s:
            row = (await s.exec(select(JobRow).where(JobRow.backend_ref == ref))).first()
            return job_record(row) if row else None

    async def jobs_by_ids(self, ids: Sequence[str]) -> dict[str, Job]:
        ids = [i for i in ids if storable(i)]
        if not ids:
            return {}
        async with self.session() as s:
            rows = (await s.exec(select(JobRow).where(col(JobRow.id).in_(list(ids))))).all()
            return {r.id: job_record(r) for r in rows}

    async def list_jobs(
        self,
        grant_ids: Sequence[str] | None,
        *,
        state: JobState | None,
        asset_id: str | None,
        first: int,
        after: str | None,
        name_prefix: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Page[Job]:
        """A page of jobs, newest first. ``tags``: each key must be set on the job, to the value given
        unless that is "" (TES's tag filter)."""
        q = select(JobRow)
        if grant_ids is not None:
            q = q.where(col(JobRow.grant_id).in_(list(grant_ids)))
        if state is not None:
            q = q.where(JobRow.state == state.value)
        if asset_id is not None:
            q = q.where(JobRow.asset_id == asset_id if storable(asset_id) else false())
        if name_prefix:
            q = q.where(col(JobRow.name).startswith(name_prefix, autoescape=True))
        for key, value in (tags or {}).items():
            tagged = core_select(_TAG.c.job_id).where(_TAG.c.job_id == JobRow.id, _TAG.c.key == key)
            if value:
                tagged = tagged.where(_TAG.c.value == value)
            q = q.where(tagged.exists())
        return await self._page(q, JobRow, job_record, first, after)

    async def live_jobs(self) -> list[Job]:
        async with self.session() as s:
            q = select(JobRow).where(col(JobRow.state).in_(LIVE_STATES)).order_by(col(JobRow.created_at))
            return [job_record(r) for r in (await s.exec(q)).all()]

    async def live_jobs_due(self, now: datetime) -> list[Job]:
        """Live jobs whose deadline has passed (the supervisor's pass reads only these, not the queue)."""
        q = core_select(_JOB).where(
            _JOB.c.state.in_(LIVE_STATES), _JOB.c.deadline_at.is_not(None), _JOB.c.deadline_at <= now
        )
        return [job_record(r) for r in await self._rows(q.order_by(_JOB.c.created_at))]

    async def finished_before(self, cutoff: datetime, limit: int) -> list[Job]:
        """At most ``limit`` terminal jobs that ended before ``cutoff``, oldest first (for retention)."""
        q = core_select(_JOB).where(
            _JOB.c.state.in_([s.value for s in TERMINAL_STATES]),
            _JOB.c.finished_at.is_not(None),
            _JOB.c.finished_at < cutoff,
        )
        return [job_record(r) for r in await self._rows(q.order_by(_JOB.c.finished_at).limit(limit))]

    async def queued_jobs(self, excluded_consumers: Iterable[str] = ()) -> list[Job]:
        """QUEUED jobs, oldest first, leaving out those of the given consumers (at their running limit)."""
        q = core_select(_JOB).where(_JOB.c.state == JobState.QUEUED.value)
        if excluded := list(excluded_consumers):
            q = q.where(_JOB.c.consumer_id.not_in(excluded))
        return [job_record(r) for r in await self._rows(q.order_by(_JOB.c.created_at))]

    async def count_jobs(self, states: Sequence[str], consumer_id: str | None = None) -> int:
        q = core_select(func.count()).select_from(_JOB).where(_JOB.c.state.in_(list(states)))
        if consumer_id is not None:
            q = q.where(_JOB.c.consumer_id == consumer_id)
        return int((await self._rows(q))[0][0])

    async def count_by_state(self) -> dict[str, int]:
        async with self.session() as s:
            q = select(JobRow.state, func.count()).group_by(col(JobRow.state))
            return {state: int(n) for state, n in (await s.exec(q)).all()}

    async def active_count(self, *, owner: str) -> int:
        """Active jobs (INITIALIZING, RUNNING, CANCELING) that replica ``owner`` follows."""
        q = core_select(func.count()).where(_JOB.c.state.in_(ACTIVE_STATES), _JOB.c.owner == owner)
        return int((await self._rows(q))[0][0])

    async def in_state(self, state: JobState, *, owner: str) -> list[Job]:
        """The jobs in ``state`` that replica ``owner`` follows."""
        q = core_select(_JOB).where(_JOB.c.state == state.value, _JOB.c.owner == owner)
        return [job_record(r) for r in await self._rows(q)]

    async def active_counts_by_consumer(self) -> dict[str, int]:
        q = core_select(_JOB.c.consumer_id, func.count()).where(_JOB.c.state.in_(ACTIVE_STATES))
        return {cid: int(n) for cid, n in await self._rows(q.group_by(_JOB.c.consumer_id))}

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Change fields other than the state (backend reference, deadline, log)."""
        if "state" in fields:
            raise ValueError("state changes go through transition()")
        fields["updated_at"] = utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(update(_JOB).where(_JOB.c.id == job_id).values(**fields))

    async def transition(
        self,
        job_id: str,
        target: JobState,
        *,
        reason: str | None = None,
        message: str | None = None,
        exit_code: int | None = None,
        only_from: Sequence[JobState] | None = None,
        new_files: Sequence[FileRecord] = (),
        **fields: Any,
    ) -> tuple[Job, JobEvent] | None:
        """Move a job to ``target`` and record the event, atomically.

        ``new_files`` (a job's outputs and log) are recorded in the same transaction.
        Returns None (and changes nothing) when the job is gone, the transition is illegal, or the job is
        not in one of ``only_from``. One conditional UPDATE (the legal source states in its WHERE, the row
        back through RETURNING) makes it safe against concurrent writers without a read before.
        """
        allowed = list(JobState) if only_from is None else only_from
        sources = [s.value for s in allowed if can_transition(s, target)]
        if not sources or not storable(job_id):
            return None
        now = utcnow()
        values = _transition_values(target, now, Change(reason, message, exit_code, new_files, fields))
        if target == JobState.RUNNING:
            values["started_at"] = func.coalesce(_JOB.c.started_at, now)
        async with self.engine.begin() as conn:
            q = update(_JOB).where(_JOB.c.id == job_id, _JOB.c.state.in_(sources)).values(**values)
            row = (await conn.execute(q.returning(*_JOB.c))).first()
            if row is None:
                return None
            job = job_record(row)
            event = await self._record(conn, job, now, new_files)
        return job, event

    async def transition_by_ref(
        self, ref: str, target: JobState, decide: Callable[[Job], Change | None]
    ) -> tuple[Job, tuple[Job, JobEvent] | None] | None:
        """Move the job holding backend reference ``ref`` to ``target`` as ``decide`` (given the job as
        it is) says, in one transaction: ``(job before, (job after, event))``; ``(job, None)`` when
        ``decide`` declines or the transition is illegal; None when no job holds ``ref``."""
        job: Job | None = None
        for _ in range(5):
            async with self.engine.begin() as conn:
                read = core_select(_JOB).where(_JOB.c.backend_ref == ref).limit(1)
                row = (await conn.execute(read)).first()
                if row is None:
                    return None
                job = job_record(row)
                change = decide(job) if can_transition(job.state, target) else None
                if change is None:
                    return job, None
                now = utcnow()
                values = _transition_values(target, now, change)
                if target == JobState.RUNNING and job.started_at is None:
                    values["started_at"] = now
                q = update(_JOB).where(_JOB.c.id == job.id, _JOB.c.state == job.state.value)
                if (await conn.execute(q.values(**values))).rowcount != 1:
                    await conn.rollback()
                    continue  # somebody else moved it; read again
                after = replace(job, **{**values, "state": target})
                event = await self._record(conn, after, now, change.new_files)
            return job, (after, event)
        assert job is not None
        return job, None

    async def _record(
        self, conn: AsyncConnection, job: Job, now: datetime, new_files: Sequence[FileRecord]
    ) -> JobEvent:
        """The event of a transition (and the files it brings) in the open transaction ``conn``."""
        event = await self._add_event(conn, job, now)
        if new_files:
            await conn.execute(insert(_FILE), [file_fields(f) for f in new_files])
        return event

    async def delete_job(self, job_id: str) -> None:
        async with self.session() as s:
            await s.exec(delete(JobEventRow).where(col(JobEventRow.job_id) == job_id))
            await s.exec(delete(JobTagRow).where(col(JobTagRow.job_id) == job_id))
            await s.exec(delete(JobRow).where(col(JobRow.id) == job_id))
            await s.commit()

    async def _add_event(self, conn: AsyncConnection, job: Job, now: datetime) -> JobEvent:
        """Insert the JobEvent of ``job`` as it is now in the open transaction ``conn`` (which the caller
        commits).

        PostgreSQL hands out sequence values at insert time but transactions commit in any order, so
        without care a reader could see seq 11 committed while seq 10 is still in flight, and a replay
        ``since=11`` would then miss 10 for good. Taking one transaction-level advisory lock before the
        insert makes event transactions allocate and commit one after another: seq order is commit order.
        The NOTIFY is transactional too: PostgreSQL delivers it only after the commit, in commit order.
        SQLite needs neither: it has a single writer, and the bus is in-process.
        """
        if self.is_postgresql:
            await conn.execute(core_select(func.pg_advisory_xact_lock(EVENT_LOCK_KEY)))
        event = JobEvent(
            seq=0,
            job_id=job.id,
            consumer_id=job.consumer_id,
            grant_id=job.grant_id,
            state=job.state,
            reason=job.reason,
            message=job.message,
            exit_code=job.exit_code,
            created_at=now,
        )
        fields = {f: getattr(event, f) for f in _EVENT_FIELDS}
        result = await conn.execute(insert(_EVENT).values(**fields, state=job.state.value))
        key = result.inserted_primary_key
        assert key is not None
        if self.is_postgresql:
            await conn.execute(core_select(func.pg_notify(EVENTS_CHANNEL, str(key[0]))))
        return replace(event, seq=int(key[0]))

    async def live_jobs_of_grant(self, grant_id: str) -> list[Job]:
        async with self.session() as s:
            q = select(JobRow).where(JobRow.grant_id == grant_id, col(JobRow.state).in_(LIVE_STATES))
            return [job_record(r) for r in (await s.exec(q)).all()]
