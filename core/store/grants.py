"""The grant repository: consumers and their grants (tokens by hash, EDC transfers, callback state)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from core.models import DATAPLANE, CallbackState, Consumer, Grant, GrantState, utcnow
from core.store.base import Repository
from core.store.rows import as_utc, consumer_record, grant_record, storable
from core.store.tables import ConsumerRow, GrantRow

# A callback may go while the grant is not deprovisioned, or when it is the data plane's deprovision
# callback.
_CALLBACK_MAY_GO = or_(
    col(GrantRow.state) != GrantState.DEPROVISIONED.value, col(GrantRow.dialect) == DATAPLANE
)


class GrantRepository(Repository):
    """Consumers and grants: one aggregate, since a grant is how a consumer holds access."""

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

    async def list_consumers(self) -> list[Consumer]:
        async with self.session() as s:
            q = select(ConsumerRow).order_by(col(ConsumerRow.created_at), col(ConsumerRow.id))
            return [consumer_record(r) for r in (await s.exec(q)).all()]

    async def consumer_by_participant(self, participant_id: str) -> Consumer | None:
        async with self.session() as s:
            row = (
                await s.exec(select(ConsumerRow).where(ConsumerRow.participant_id == participant_id))
            ).first()
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
            dialect=grant.dialect,
        )
        async with self.session() as s:
            s.add(row)
            try:
                await s.commit()
            except IntegrityError:
                await s.rollback()
                return False
        return True

    async def grant_by_token_hash(self, token_hash: str) -> Grant | None:
        async with self.session() as s:
            row = (await s.exec(select(GrantRow).where(GrantRow.token_hash == token_hash))).first()
            return grant_record(row) if row else None

    async def get_grant(self, grant_id: str) -> Grant | None:
        async with self.session() as s:
            row = await s.get(GrantRow, grant_id)
            return grant_record(row) if row else None

    async def grant_by_transfer(self, transfer_process_id: str) -> Grant | None:
        async with self.session() as s:
            q = select(GrantRow).where(GrantRow.transfer_process_id == transfer_process_id)
            row = (await s.exec(q)).first()
            return grant_record(row) if row else None

    async def list_grants(self, consumer_id: str | None = None) -> list[Grant]:
        async with self.session() as s:
            q = select(GrantRow).order_by(col(GrantRow.created_at))
            if consumer_id is not None:
                q = q.where(GrantRow.consumer_id == consumer_id)
            return [grant_record(r) for r in (await s.exec(q)).all()]

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
                _CALLBACK_MAY_GO,
            )
            return [grant_record(r) for r in (await s.exec(q)).all()]

    async def claim_callback(self, grant_id: str, now: datetime, until: datetime) -> bool:
        """Take the due callback of ``grant_id`` for one attempt (its next try moves to ``until``): True for
        the one replica whose claim won, False when another took it first or it is not due."""
        q = update(GrantRow).where(
            col(GrantRow.id) == grant_id,
            col(GrantRow.callback_state).in_([CallbackState.PENDING.value, CallbackState.UNAUTHORIZED.value]),
            col(GrantRow.callback_next_at) <= now,
        )
        async with self.engine.begin() as conn:
            return bool((await conn.execute(q.values(callback_next_at=until))).rowcount)

    async def next_callback_at(self) -> datetime | None:
        async with self.session() as s:
            q = select(func.min(GrantRow.callback_next_at)).where(
                col(GrantRow.callback_state).in_(
                    [CallbackState.PENDING.value, CallbackState.UNAUTHORIZED.value]
                ),
                _CALLBACK_MAY_GO,
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
