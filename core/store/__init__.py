"""The repository: every database read and write of the service, returning domain records.

:class:`Store` is the one object callers hold. The job paths (transitions, events) live in
:mod:`core.store.jobs`, the shared engine and paging in :mod:`core.store.base`, and the row <-> record
mapping in :mod:`core.store.rows`; this module adds assets, consumers, grants and files, and re-exports
the names callers import from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, false, func, update
from sqlalchemy import select as core_select
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.assets import Asset
from core.models import CallbackState, Consumer, FileRecord, FileStatus, Grant, GrantState, Page, utcnow
from core.store.jobs import EVENTS_CHANNEL, LIVE_STATES, Change, JobStore
from core.store.rows import (
    as_utc,
    consumer_record,
    encode_cursor,
    file_fields,
    file_record,
    grant_record,
    storable,
)
from core.store.tables import AssetRow, ConsumerRow, FileRow, GrantRow

# Callers import these from here; they are defined in the store's other modules.
__all__ = ["EVENTS_CHANNEL", "LIVE_STATES", "Change", "Store", "encode_cursor"]

_ASSET: Table = AssetRow.__table__  # type: ignore[attr-defined]


class Store(JobStore):
    """The repository: the jobs and events of :class:`JobStore`, plus assets, consumers, grants, files."""

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
            q = q.where(_ASSET.c.id.in_([i for i in ids if storable(i)]))
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
        return consumer_record(row)

    async def get_consumer(self, consumer_id: str) -> Consumer | None:
        if not storable(consumer_id):
            return None
        async with self.session() as s:
            row = await s.get(ConsumerRow, consumer_id)
            return consumer_record(row) if row else None

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
        return grant_record(row)

    async def grant_by_token_hash(self, token_hash: str) -> Grant | None:
        async with self.session() as s:
            row = (await s.exec(select(GrantRow).where(GrantRow.token_hash == token_hash))).first()
            return grant_record(row) if row else None

    async def list_grants(self, consumer_id: str | None = None) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).order_by(col(GrantRow.created_at))
            if consumer_id is not None:
                q = q.where(GrantRow.consumer_id == consumer_id)
            return [grant_record(r) for r in (await s.exec(q)).all()]

    # -- files -----------------------------------------------------------------------------------------

    async def insert_file(self, record: FileRecord) -> None:
        async with self.session() as s:
            s.add(FileRow(**file_fields(record)))
            await s.commit()

    async def get_file(self, file_id: str) -> FileRecord | None:
        if not storable(file_id):
            return None
        async with self.session() as s:
            row = await s.get(FileRow, file_id)
            return file_record(row) if row else None

    async def files_by_ids(self, ids: Sequence[str]) -> dict[str, FileRecord]:
        ids = [i for i in ids if storable(i)]
        if not ids:
            return {}
        async with self.session() as s:
            rows = (await s.exec(select(FileRow).where(col(FileRow.id).in_(list(ids))))).all()
            return {r.id: file_record(r) for r in rows}

    async def files_of_jobs(self, job_ids: Sequence[str]) -> list[FileRecord]:
        if not job_ids:
            return []
        async with self.session() as s:
            q = select(FileRow).where(col(FileRow.job_id).in_(list(job_ids))).order_by(col(FileRow.name))
            return [file_record(r) for r in (await s.exec(q)).all()]

    async def list_files(
        self, grant_ids: Sequence[str] | None, *, job_id: str | None, first: int, after: str | None
    ) -> Page[FileRecord]:
        q = select(FileRow).where(FileRow.status == FileStatus.READY.value)
        if grant_ids is not None:
            q = q.where(col(FileRow.grant_id).in_(list(grant_ids)))
        if job_id is not None:
            q = q.where(FileRow.job_id == job_id if storable(job_id) else false())
        return await self._page(q, FileRow, file_record, first, after)

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
            return [file_record(r) for r in (await s.exec(q)).all()]

    # -- provisioned grants ----------------------------------------------------------------------------

    async def get_grant(self, grant_id: str) -> Grant | None:
        async with self.session() as s:
            row = await s.get(GrantRow, grant_id)
            return grant_record(row) if row else None

    async def grant_by_transfer(self, transfer_process_id: str) -> Grant | None:
        async with self.session() as s:
            q = select(GrantRow).where(GrantRow.transfer_process_id == transfer_process_id)
            row = (await s.exec(q)).first()
            return grant_record(row) if row else None

    async def consumer_by_participant(self, participant_id: str) -> Consumer | None:
        async with self.session() as s:
            row = (
                await s.exec(select(ConsumerRow).where(ConsumerRow.participant_id == participant_id))
            ).first()
            return consumer_record(row) if row else None

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
            return [grant_record(r) for r in (await s.exec(q)).all()]

    async def next_callback_at(self) -> datetime | None:
        async with self.session() as s:
            q = select(func.min(GrantRow.callback_next_at)).where(
                col(GrantRow.callback_state).in_(
                    [CallbackState.PENDING.value, CallbackState.UNAUTHORIZED.value]
                ),
                GrantRow.state != GrantState.DEPROVISIONED.value,
            )
            return as_utc((await s.exec(q)).one())

    async def expired_grants(self, now: datetime) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).where(
                GrantRow.state != GrantState.DEPROVISIONED.value,
                col(GrantRow.expires_at).is_not(None),
                col(GrantRow.expires_at) <= now,
            )
            return [grant_record(r) for r in (await s.exec(q)).all()]

    async def grants_to_purge(self) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).where(
                GrantRow.state == GrantState.DEPROVISIONED.value, col(GrantRow.files_purged).is_(False)
            )
            return [grant_record(r) for r in (await s.exec(q)).all()]

    async def files_of_grant(self, grant_id: str) -> list[FileRecord]:
        async with self.session() as s:
            return [
                file_record(r)
                for r in (await s.exec(select(FileRow).where(FileRow.grant_id == grant_id))).all()
            ]
