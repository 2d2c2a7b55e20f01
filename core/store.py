"""The repository: every database read and write of the service, returning domain records.

State changes go through :meth:`Store.transition`, which checks the transition table, updates the job
only if nobody changed it meanwhile (compare-and-set on the state), and writes the JobEvent in the same
transaction. On PostgreSQL that transaction also takes a transaction-level advisory lock before it
allocates the event's ``seq`` and sends a NOTIFY (delivered by PostgreSQL only when it commits), so
``seq`` order is commit order and other replicas hear of every event; see :meth:`Store._add_event`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, false, func, insert, or_, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.assets import Asset
from core.models import (
    CallbackState,
    Consumer,
    FileOrigin,
    FileRecord,
    FileStatus,
    Grant,
    GrantState,
    InputBinding,
    Job,
    JobEvent,
    Page,
    utcnow,
)
from core.states import TERMINAL_STATES, JobState, can_transition
from core.tables import AssetRow, ConsumerRow, FileRow, GrantRow, JobEventRow, JobRow

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
_ASSET: Table = AssetRow.__table__  # type: ignore[attr-defined]
_EVENT_FIELDS = ("job_id", "consumer_id", "grant_id", "reason", "message", "exit_code", "created_at")


@dataclass(frozen=True, slots=True)
class Change:
    """What a transition writes besides the state: see :meth:`Store.transition`."""

    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    new_files: Sequence[FileRecord] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)


def _transition_values(target: JobState, now: datetime, change: Change) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": target.value,
        "reason": change.reason,
        "message": change.message,
        "updated_at": now,
        **change.fields,
    }
    if change.exit_code is not None:
        values["exit_code"] = change.exit_code
    if target.terminal:
        values["finished_at"] = now
        values["deadline_at"] = None
    return values


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _storable(value: str) -> bool:
    # PostgreSQL text cannot hold NUL, so no stored id or key contains one: such a value matches nothing
    # (and must not reach the database, which would refuse the whole query).
    return "\x00" not in value


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = f"{_utc(created_at).isoformat()}|{ident}"  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ident = raw.split("|", 1)
        # In UTC, as stored: PostgreSQL compares instants and cannot take a time outside its calendar.
        return _utc(datetime.fromisoformat(stamp)).astimezone(UTC), ident  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self.is_postgresql = engine.dialect.name == "postgresql"

    def session(self) -> AsyncSession:
        return self._sessions()

    # -- assets ----------------------------------------------------------------------------------------

    async def sync_assets(self, assets: Sequence[Asset]) -> None:
        """Make the catalogue the truth: upsert every asset, deactivate the ones no longer listed."""
        now = utcnow()
        async with self.session() as s:
            existing = {r.id: r for r in (await s.exec(select(AssetRow))).all()}
            for asset in assets:
                row = existing.pop(asset.id, None) or AssetRow(
                    id=asset.id, version="", spec={}, updated_at=now
                )
                row.version, row.spec, row.active, row.updated_at = asset.version, asset.frozen(), True, now
                s.add(row)
            for row in existing.values():
                row.active = False
                s.add(row)
            await s.commit()

    async def list_assets(self, ids: Iterable[str] | None = None) -> list[Asset]:
        q = core_select(_ASSET.c.spec).where(_ASSET.c.active).order_by(_ASSET.c.id)
        if ids is not None:
            q = q.where(_ASSET.c.id.in_([i for i in ids if _storable(i)]))
        return [Asset.model_validate(r.spec) for r in await self._rows(q)]

    async def get_asset(self, asset_id: str) -> Asset | None:
        found = await self.list_assets([asset_id])
        return found[0] if found else None

    # -- consumers and grants --------------------------------------------------------------------------

    async def create_consumer(self, ident: str, name: str, participant_id: str | None = None) -> Consumer:
        row = ConsumerRow(id=ident, name=name, participant_id=participant_id, created_at=utcnow())
        async with self.session() as s:
            s.add(row)
            await s.commit()
        return _consumer(row)

    async def get_consumer(self, consumer_id: str) -> Consumer | None:
        if not _storable(consumer_id):
            return None
        async with self.session() as s:
            row = await s.get(ConsumerRow, consumer_id)
            return _consumer(row) if row else None

    async def create_grant(
        self, ident: str, consumer_id: str, asset_id: str, token_hash: str, expires_at: datetime | None
    ) -> Grant:
        row = GrantRow(
            id=ident,
            consumer_id=consumer_id,
            asset_id=asset_id,
            token_hash=token_hash,
            state=GrantState.ACTIVE.value,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        async with self.session() as s:
            s.add(row)
            await s.commit()
        return _grant(row)

    async def grant_by_token_hash(self, token_hash: str) -> Grant | None:
        async with self.session() as s:
            row = (await s.exec(select(GrantRow).where(GrantRow.token_hash == token_hash))).first()
            return _grant(row) if row else None

    async def list_grants(self, consumer_id: str | None = None) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).order_by(col(GrantRow.created_at))
            if consumer_id is not None:
                q = q.where(GrantRow.consumer_id == consumer_id)
            return [_grant(r) for r in (await s.exec(q)).all()]

    # -- files -----------------------------------------------------------------------------------------

    async def insert_file(self, record: FileRecord) -> None:
        async with self.session() as s:
            s.add(FileRow(**_file_fields(record)))
            await s.commit()

    async def get_file(self, file_id: str) -> FileRecord | None:
        if not _storable(file_id):
            return None
        async with self.session() as s:
            row = await s.get(FileRow, file_id)
            return _file(row) if row else None

    async def files_by_ids(self, ids: Sequence[str]) -> dict[str, FileRecord]:
        ids = [i for i in ids if _storable(i)]
        if not ids:
            return {}
        async with self.session() as s:
            rows = (await s.exec(select(FileRow).where(col(FileRow.id).in_(list(ids))))).all()
            return {r.id: _file(r) for r in rows}

    async def files_of_jobs(self, job_ids: Sequence[str]) -> list[FileRecord]:
        if not job_ids:
            return []
        async with self.session() as s:
            q = select(FileRow).where(col(FileRow.job_id).in_(list(job_ids))).order_by(col(FileRow.name))
            return [_file(r) for r in (await s.exec(q)).all()]

    async def list_files(
        self, grant_ids: Sequence[str] | None, *, job_id: str | None, first: int, after: str | None
    ) -> Page[FileRecord]:
        q = select(FileRow).where(FileRow.status == FileStatus.READY.value)
        if grant_ids is not None:
            q = q.where(col(FileRow.grant_id).in_(list(grant_ids)))
        if job_id is not None:
            q = q.where(FileRow.job_id == job_id if _storable(job_id) else false())
        return await self._page(q, FileRow, _file, first, after)

    async def update_file(self, file_id: str, **fields: Any) -> None:
        async with self.session() as s:
            await s.exec(update(FileRow).where(col(FileRow.id) == file_id).values(**fields))
            await s.commit()

    async def delete_file(self, file_id: str) -> None:
        async with self.session() as s:
            await s.exec(delete(FileRow).where(col(FileRow.id) == file_id))
            await s.commit()

    async def expired_files(self, now: datetime) -> list[FileRecord]:
        async with self.session() as s:
            q = select(FileRow).where(col(FileRow.expires_at).is_not(None), col(FileRow.expires_at) < now)
            return [_file(r) for r in (await s.exec(q)).all()]

    # -- jobs ------------------------------------------------------------------------------------------

    async def insert_job(self, job: Job) -> JobEvent:
        """Persist a new job and its first event in one transaction."""
        async with self.engine.begin() as conn:
            await conn.execute(insert(_JOB).values(**_job_fields(job)))
            return await self._add_event(conn, job, job.created_at)

    async def get_job(self, job_id: str) -> Job | None:
        if not _storable(job_id):
            return None
        async with self.session() as s:
            row = await s.get(JobRow, job_id)
            return _job(row) if row else None

    async def job_by_ref(self, ref: str) -> Job | None:
        async with self.session() as s:
            row = (await s.exec(select(JobRow).where(JobRow.backend_ref == ref))).first()
            return _job(row) if row else None

    async def jobs_by_ids(self, ids: Sequence[str]) -> dict[str, Job]:
        ids = [i for i in ids if _storable(i)]
        if not ids:
            return {}
        async with self.session() as s:
            rows = (await s.exec(select(JobRow).where(col(JobRow.id).in_(list(ids))))).all()
            return {r.id: _job(r) for r in rows}

    async def list_jobs(
        self,
        grant_ids: Sequence[str] | None,
        *,
        state: JobState | None,
        asset_id: str | None,
        first: int,
        after: str | None,
    ) -> Page[Job]:
        q = select(JobRow)
        if grant_ids is not None:
            q = q.where(col(JobRow.grant_id).in_(list(grant_ids)))
        if state is not None:
            q = q.where(JobRow.state == state.value)
        if asset_id is not None:
            q = q.where(JobRow.asset_id == asset_id if _storable(asset_id) else false())
        return await self._page(q, JobRow, _job, first, after)

    async def live_jobs(self) -> list[Job]:
        async with self.session() as s:
            q = select(JobRow).where(col(JobRow.state).in_(LIVE_STATES)).order_by(col(JobRow.created_at))
            return [_job(r) for r in (await s.exec(q)).all()]

    async def live_jobs_due(self, now: datetime) -> list[Job]:
        """Live jobs whose deadline has passed (the supervisor's pass reads only these, not the queue)."""
        q = core_select(_JOB).where(
            _JOB.c.state.in_(LIVE_STATES), _JOB.c.deadline_at.is_not(None), _JOB.c.deadline_at <= now
        )
        return [_job(r) for r in await self._rows(q.order_by(_JOB.c.created_at))]

    async def queued_jobs(self, excluded_consumers: Iterable[str] = ()) -> list[Job]:
        """QUEUED jobs, oldest first, leaving out those of the given consumers (at their running limit)."""
        q = core_select(_JOB).where(_JOB.c.state == JobState.QUEUED.value)
        if excluded := list(excluded_consumers):
            q = q.where(_JOB.c.consumer_id.not_in(excluded))
        return [_job(r) for r in await self._rows(q.order_by(_JOB.c.created_at))]

    async def count_jobs(self, states: Sequence[str], consumer_id: str | None = None) -> int:
        q = core_select(func.count()).select_from(_JOB).where(_JOB.c.state.in_(list(states)))
        if consumer_id is not None:
            q = q.where(_JOB.c.consumer_id == consumer_id)
        return int((await self._rows(q))[0][0])

    async def count_by_state(self) -> dict[str, int]:
        async with self.session() as s:
            q = select(JobRow.state, func.count()).group_by(col(JobRow.state))
            return {state: int(n) for state, n in (await s.exec(q)).all()}

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

    async def _rows(self, q: Any) -> Sequence[Any]:
        """The rows of a Core query, read outside any ORM session."""
        async with self.engine.connect() as conn:
            return (await conn.execute(q)).all()

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
        if not sources or not _storable(job_id):
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
            job = _job(row)
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
                job = _job(row)
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
            await conn.execute(insert(_FILE), [_file_fields(f) for f in new_files])
        return event

    async def delete_job(self, job_id: str) -> None:
        async with self.session() as s:
            await s.exec(delete(JobEventRow).where(col(JobEventRow.job_id) == job_id))
            await s.exec(delete(JobRow).where(col(JobRow.id) == job_id))
            await s.commit()

    async def events(self, job_id: str) -> list[JobEvent]:
        async with self.session() as s:
            q = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(col(JobEventRow.seq))
            return [_event(r) for r in (await s.exec(q)).all()]

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

    async def events_after(
        self, seq: int, *, job_id: str | None = None, grant_ids: Sequence[str] | None = None, limit: int = 500
    ) -> list[JobEvent]:
        """Up to ``limit`` events with a seq above ``seq``, oldest first (optionally one job's, or only
        those of ``grant_ids``)."""
        q = select(JobEventRow).where(col(JobEventRow.seq) > seq)
        if job_id is not None:
            q = q.where(JobEventRow.job_id == job_id if _storable(job_id) else false())
        if grant_ids is not None:
            q = q.where(col(JobEventRow.grant_id).in_(list(grant_ids)))
        q = q.order_by(col(JobEventRow.seq)).limit(limit)
        async with self.session() as s:
            return [_event(r) for r in (await s.exec(q)).all()]

    async def last_event_seq(self) -> int:
        async with self.session() as s:
            last = (await s.exec(select(func.max(JobEventRow.seq)))).one()
            return int(last or 0)

    # -- provisioned grants ----------------------------------------------------------------------------

    async def get_grant(self, grant_id: str) -> Grant | None:
        async with self.session() as s:
            row = await s.get(GrantRow, grant_id)
            return _grant(row) if row else None

    async def grant_by_transfer(self, transfer_process_id: str) -> Grant | None:
        async with self.session() as s:
            q = select(GrantRow).where(GrantRow.transfer_process_id == transfer_process_id)
            row = (await s.exec(q)).first()
            return _grant(row) if row else None

    async def consumer_by_participant(self, participant_id: str) -> Consumer | None:
        async with self.session() as s:
            row = (
                await s.exec(select(ConsumerRow).where(ConsumerRow.participant_id == participant_id))
            ).first()
            return _consumer(row) if row else None

    async def insert_grant(self, grant: Grant, token_hash: str, policy: dict[str, Any] | None) -> bool:
        """Insert a provisioned grant; False when its transfer already has one (a duplicate request)."""
        row = GrantRow(
            id=grant.id,
            consumer_id=grant.consumer_id,
            asset_id=grant.asset_id,
            token_hash=token_hash,
            state=grant.state.value,
            created_at=grant.created_at,
            expires_at=grant.expires_at,
            transfer_process_id=grant.transfer_process_id,
            resource_definition_id=grant.resource_definition_id,
            callback_address=grant.callback_address,
            secret_salt=grant.secret_salt,
            policy=policy,
            callback_state=grant.callback_state.value if grant.callback_state else None,
            callback_next_at=grant.callback_next_at,
        )
        async with self.session() as s:
            s.add(row)
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                return False
        return True

    async def update_grant(self, grant_id: str, **fields: Any) -> None:
        async with self.session() as s:
            await s.exec(update(GrantRow).where(col(GrantRow.id) == grant_id).values(**fields))
            await s.commit()

    async def grants_with_callback_due(self, now: datetime) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).where(
                col(GrantRow.callback_state).in_(
                    [CallbackState.PENDING.value, CallbackState.UNAUTHORIZED.value]
                ),
                col(GrantRow.callback_next_at) <= now,
                GrantRow.state != GrantState.DEPROVISIONED.value,
            )
            return [_grant(r) for r in (await s.exec(q)).all()]

    async def next_callback_at(self) -> datetime | None:
        async with self.session() as s:
            q = select(func.min(GrantRow.callback_next_at)).where(
                col(GrantRow.callback_state).in_(
                    [CallbackState.PENDING.value, CallbackState.UNAUTHORIZED.value]
                ),
                GrantRow.state != GrantState.DEPROVISIONED.value,
            )
            return _utc((await s.exec(q)).one())

    async def expired_grants(self, now: datetime) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).where(
                GrantRow.state != GrantState.DEPROVISIONED.value,
                col(GrantRow.expires_at).is_not(None),
                col(GrantRow.expires_at) <= now,
            )
            return [_grant(r) for r in (await s.exec(q)).all()]

    async def grants_to_purge(self) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).where(
                GrantRow.state == GrantState.DEPROVISIONED.value, col(GrantRow.files_purged).is_(False)
            )
            return [_grant(r) for r in (await s.exec(q)).all()]

    async def live_jobs_of_grant(self, grant_id: str) -> list[Job]:
        async with self.session() as s:
            q = select(JobRow).where(JobRow.grant_id == grant_id, col(JobRow.state).in_(LIVE_STATES))
            return [_job(r) for r in (await s.exec(q)).all()]

    async def files_of_grant(self, grant_id: str) -> list[FileRecord]:
        async with self.session() as s:
            return [
                _file(r) for r in (await s.exec(select(FileRow).where(FileRow.grant_id == grant_id))).all()
            ]

    # -- paging ----------------------------------------------------------------------------------------

    async def _page(self, q: Any, table: Any, convert: Any, first: int, after: str | None) -> Page[Any]:
        if after is not None:
            decoded = decode_cursor(after)
            if decoded is None:
                raise ValueError("invalid cursor")
            stamp, ident = decoded
            if not _storable(ident):
                raise ValueError("invalid cursor")
            q = q.where(
                or_(
                    col(table.created_at) < stamp,
                    (col(table.created_at) == stamp) & (col(table.id) < ident),
                )
            )
        q = q.order_by(col(table.created_at).desc(), col(table.id).desc()).limit(first + 1)
        async with self.session() as s:
            rows = list((await s.exec(q)).all())
        has_next = len(rows) > first
        rows = rows[:first]
        end = encode_cursor(rows[-1].created_at, rows[-1].id) if rows else None
        return Page(items=[convert(r) for r in rows], has_next=has_next, end_cursor=end)


# -- row <-> record ------------------------------------------------------------------------------------


def _consumer(r: ConsumerRow) -> Consumer:
    return Consumer(id=r.id, name=r.name, participant_id=r.participant_id, created_at=_utc(r.created_at))  # type: ignore[arg-type]


def _grant(r: GrantRow) -> Grant:
    return Grant(
        id=r.id,
        consumer_id=r.consumer_id,
        asset_id=r.asset_id,
        state=GrantState(r.state),
        created_at=_utc(r.created_at),  # type: ignore[arg-type]
        expires_at=_utc(r.expires_at),
        transfer_process_id=r.transfer_process_id,
        resource_definition_id=r.resource_definition_id,
        callback_address=r.callback_address,
        secret_salt=r.secret_salt,
        callback_state=CallbackState(r.callback_state) if r.callback_state else None,
        callback_attempts=r.callback_attempts,
        callback_next_at=_utc(r.callback_next_at),
        callback_error=r.callback_error,
        deprovisioned_at=_utc(r.deprovisioned_at),
        files_purged=r.files_purged,
    )


def _file_fields(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "consumer_id": f.consumer_id,
        "grant_id": f.grant_id,
        "job_id": f.job_id,
        "name": f.name,
        "size": f.size,
        "sha256": f.sha256,
        "content_type": f.content_type,
        "origin": f.origin.value,
        "status": f.status.value,
        "storage_key": f.storage_key,
        "expected_size": f.expected_size,
        "expected_sha256": f.expected_sha256,
        "created_at": f.created_at,
        "expires_at": f.expires_at,
    }


def _file(r: FileRow) -> FileRecord:
    return FileRecord(
        id=r.id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        job_id=r.job_id,
        name=r.name,
        size=r.size,
        sha256=r.sha256,
        content_type=r.content_type,
        origin=FileOrigin(r.origin),
        status=FileStatus(r.status),
        storage_key=r.storage_key,
        created_at=_utc(r.created_at),  # type: ignore[arg-type]
        expires_at=_utc(r.expires_at),
        expected_size=r.expected_size,
        expected_sha256=r.expected_sha256,
    )


def _job_fields(j: Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "consumer_id": j.consumer_id,
        "grant_id": j.grant_id,
        "asset_id": j.asset_id,
        "asset_spec": j.asset.frozen(),
        "inputs": [{"slot": b.slot, "file_id": b.file_id} for b in j.inputs],
        "parameters": j.parameters,
        "state": j.state.value,
        "reason": j.reason,
        "message": j.message,
        "exit_code": j.exit_code,
        "backend_ref": j.backend_ref,
        "deadline_at": j.deadline_at,
        "log_tail": j.log_tail,
        "log_file_id": j.log_file_id,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
    }


def _job(r: Any) -> Job:
    # An ORM row or a Core row: both are read by attribute.
    return Job(
        id=r.id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        asset_id=r.asset_id,
        asset=Asset.model_validate(r.asset_spec),
        inputs=tuple(InputBinding(slot=i["slot"], file_id=i["file_id"]) for i in r.inputs),
        parameters=dict(r.parameters),
        state=JobState(r.state),
        reason=r.reason,
        message=r.message,
        exit_code=r.exit_code,
        backend_ref=r.backend_ref,
        deadline_at=_utc(r.deadline_at),
        log_tail=r.log_tail,
        log_file_id=r.log_file_id,
        created_at=_utc(r.created_at),  # type: ignore[arg-type]
        updated_at=_utc(r.updated_at),  # type: ignore[arg-type]
        started_at=_utc(r.started_at),
        finished_at=_utc(r.finished_at),
    )


def _event(r: JobEventRow) -> JobEvent:
    assert r.seq is not None
    return JobEvent(
        seq=r.seq,
        job_id=r.job_id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        state=JobState(r.state),
        reason=r.reason,
        message=r.message,
        exit_code=r.exit_code,
        created_at=_utc(r.created_at),  # type: ignore[arg-type]
    )
