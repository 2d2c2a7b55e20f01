"""The repository: every database read and write of the service, returning domain records.

State changes go through :meth:`Store.transition`, which checks the transition table, updates the job
only if nobody changed it meanwhile (compare-and-set on the state), and writes the JobEvent in the same
transaction.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, or_, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.assets import Asset
from core.models import (
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

LIVE_STATES = [s.value for s in JobState if s not in TERMINAL_STATES]
# States that hold backend capacity.
ACTIVE_STATES = [JobState.INITIALIZING.value, JobState.RUNNING.value, JobState.CANCELING.value]


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = f"{_utc(created_at).isoformat()}|{ident}"  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ident = raw.split("|", 1)
        return datetime.fromisoformat(stamp), ident
    except (ValueError, UnicodeDecodeError):
        return None


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

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
        async with self.session() as s:
            q = select(AssetRow).where(col(AssetRow.active)).order_by(col(AssetRow.id))
            if ids is not None:
                q = q.where(col(AssetRow.id).in_(list(ids)))
            return [Asset.model_validate(r.spec) for r in (await s.exec(q)).all()]

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
        async with self.session() as s:
            row = await s.get(FileRow, file_id)
            return _file(row) if row else None

    async def files_by_ids(self, ids: Sequence[str]) -> dict[str, FileRecord]:
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
            q = q.where(FileRow.job_id == job_id)
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
        row = JobRow(**_job_fields(job))
        event = _event_row(row, job.created_at)
        async with self.session() as s:
            s.add(row)
            s.add(event)
            await s.commit()
        return _event(event)

    async def get_job(self, job_id: str) -> Job | None:
        async with self.session() as s:
            row = await s.get(JobRow, job_id)
            return _job(row) if row else None

    async def job_by_ref(self, ref: str) -> Job | None:
        async with self.session() as s:
            row = (await s.exec(select(JobRow).where(JobRow.backend_ref == ref))).first()
            return _job(row) if row else None

    async def jobs_by_ids(self, ids: Sequence[str]) -> dict[str, Job]:
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
            q = q.where(JobRow.asset_id == asset_id)
        return await self._page(q, JobRow, _job, first, after)

    async def live_jobs(self) -> list[Job]:
        async with self.session() as s:
            q = select(JobRow).where(col(JobRow.state).in_(LIVE_STATES)).order_by(col(JobRow.created_at))
            return [_job(r) for r in (await s.exec(q)).all()]

    async def count_jobs(self, states: Sequence[str], consumer_id: str | None = None) -> int:
        async with self.session() as s:
            q = select(func.count()).select_from(JobRow).where(col(JobRow.state).in_(list(states)))
            if consumer_id is not None:
                q = q.where(JobRow.consumer_id == consumer_id)
            return int((await s.exec(q)).one())

    async def active_counts_by_consumer(self) -> dict[str, int]:
        async with self.session() as s:
            q = (
                select(JobRow.consumer_id, func.count())
                .where(col(JobRow.state).in_(ACTIVE_STATES))
                .group_by(col(JobRow.consumer_id))
            )
            return {cid: int(n) for cid, n in (await s.exec(q)).all()}

    async def update_job(self, job_id: str, **fields: Any) -> None:
        """Change fields other than the state (backend reference, deadline, log)."""
        if "state" in fields:
            raise ValueError("state changes go through transition()")
        fields["updated_at"] = utcnow()
        async with self.session() as s:
            await s.exec(update(JobRow).where(col(JobRow.id) == job_id).values(**fields))
            await s.commit()

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
        not in one of ``only_from``. Concurrent writers are safe: the update only applies if the state is
        still the one read.
        """
        for _ in range(5):
            async with self.session() as s:
                row = await s.get(JobRow, job_id)
                if row is None:
                    return None
                current = JobState(row.state)
                if only_from is not None and current not in only_from:
                    return None
                if not can_transition(current, target):
                    return None
                now = utcnow()
                values: dict[str, Any] = {
                    "state": target.value,
                    "reason": reason,
                    "message": message,
                    "updated_at": now,
                    **fields,
                }
                if exit_code is not None:
                    values["exit_code"] = exit_code
                if target.terminal:
                    values["finished_at"] = now
                    values["deadline_at"] = None
                if target == JobState.RUNNING and row.started_at is None:
                    values["started_at"] = now
                result = await s.exec(
                    update(JobRow)
                    .where(col(JobRow.id) == job_id, col(JobRow.state) == current.value)
                    .values(**values)
                )
                if result.rowcount != 1:
                    await s.rollback()
                    continue  # somebody else moved it; read again
                for key, value in values.items():
                    setattr(row, key, value)
                event = _event_row(row, now)
                s.add(event)
                for record in new_files:
                    s.add(FileRow(**_file_fields(record)))
                await s.commit()
                return _job(row), _event(event)
        return None

    async def delete_job(self, job_id: str) -> None:
        async with self.session() as s:
            await s.exec(delete(JobEventRow).where(col(JobEventRow.job_id) == job_id))
            await s.exec(delete(JobRow).where(col(JobRow.id) == job_id))
            await s.commit()

    async def events(self, job_id: str) -> list[JobEvent]:
        async with self.session() as s:
            q = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(col(JobEventRow.seq))
            return [_event(r) for r in (await s.exec(q)).all()]

    # -- paging ----------------------------------------------------------------------------------------

    async def _page(self, q: Any, table: Any, convert: Any, first: int, after: str | None) -> Page[Any]:
        if after is not None:
            decoded = decode_cursor(after)
            if decoded is None:
                raise ValueError("invalid cursor")
            stamp, ident = decoded
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


def _job(r: JobRow) -> Job:
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


def _event_row(r: JobRow, now: datetime) -> JobEventRow:
    return JobEventRow(
        job_id=r.id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        state=r.state,
        reason=r.reason,
        message=r.message,
        exit_code=r.exit_code,
        created_at=now,
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
