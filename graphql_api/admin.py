"""Operator-only queries and mutations: consumers, grants and their deprovisioning."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import strawberry

from core import models as M
from core.grants import create_consumer_with_grants
from graphql_api.context import Context
from graphql_api.errors import NotFoundError, PermissionDeniedError, ValidationError, domain_errors_as_payload
from graphql_api.permissions import AUTHENTICATED, OPERATOR
from graphql_api.types import Consumer

Info = strawberry.Info[Context, None]


@strawberry.enum
class GrantState(enum.Enum):
    PROVISIONING = "PROVISIONING"
    ACTIVE = "ACTIVE"
    FAILED_CALLBACK = "FAILED_CALLBACK"
    DEPROVISIONED = "DEPROVISIONED"


@strawberry.type(
    description="One consumer's access to one asset (an EDC transfer, or created by an operator)."
)
class Grant:
    id: strawberry.ID
    consumer_id: strawberry.ID
    asset_id: strawberry.ID
    state: GrantState
    created_at: datetime
    expires_at: datetime | None
    transfer_process_id: str | None
    callback_state: str | None
    callback_attempts: int
    callback_error: str | None
    deprovisioned_at: datetime | None

    @classmethod
    def from_domain(cls, g: M.Grant) -> Grant:
        return cls(
            id=strawberry.ID(g.id),
            consumer_id=strawberry.ID(g.consumer_id),
            asset_id=strawberry.ID(g.asset_id),
            state=GrantState(g.state.value),
            created_at=g.created_at,
            expires_at=g.expires_at,
            transfer_process_id=g.transfer_process_id,
            callback_state=g.callback_state.value if g.callback_state else None,
            callback_attempts=g.callback_attempts,
            callback_error=g.callback_error,
            deprovisioned_at=g.deprovisioned_at,
        )


@strawberry.type(description="A consumer whose grants were all deprovisioned.")
class RevokedConsumer:
    consumer: Consumer
    grants: list[Grant]


@strawberry.input
class CreateConsumerInput:
    name: str
    asset_ids: list[strawberry.ID] = strawberry.field(description="One grant, and token, per asset.")
    expires_in: int | None = strawberry.field(
        default=None, description="Seconds the grants last (default: no expiry)."
    )


@strawberry.type(description="A grant's token, shown this once: only its hash is kept.")
class IssuedToken:
    grant: Grant
    token: str


@strawberry.type(description="A new consumer with its grants and their tokens.")
class CreatedConsumer:
    consumer: Consumer
    tokens: list[IssuedToken]


DeprovisionGrantPayload = Annotated[
    Grant | NotFoundError | PermissionDeniedError, strawberry.union("DeprovisionGrantPayload")
]
RevokeConsumerPayload = Annotated[RevokedConsumer | NotFoundError, strawberry.union("RevokeConsumerPayload")]
CreateConsumerPayload = Annotated[
    CreatedConsumer | ValidationError | NotFoundError, strawberry.union("CreateConsumerPayload")
]


def _consumer(c: M.Consumer) -> Consumer:
    return Consumer(id=strawberry.ID(c.id), name=c.name, created_at=c.created_at)


@strawberry.type
class AdminQuery:
    @strawberry.field(
        permission_classes=OPERATOR,
        description="Operator only: every grant (or one consumer's), oldest first.",
    )
    async def grants(
        self, info: Info, state: GrantState | None = None, consumer_id: strawberry.ID | None = None
    ) -> list[Grant]:
        found = await info.context.services.provisioning.list_grants(
            str(consumer_id) if consumer_id is not None else None
        )
        return [Grant.from_domain(g) for g in found if state is None or g.state.value == state.value]

    @strawberry.field(permission_classes=OPERATOR, description="Operator only: every consumer, oldest first.")
    async def consumers(self, info: Info) -> list[Consumer]:
        return [_consumer(c) for c in await info.context.services.provisioning.list_consumers()]


@strawberry.type
class AdminMutation:
    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Operator only: revoke a grant, cancel its jobs, remove its files.",
    )
    @domain_errors_as_payload
    async def deprovision_grant(self, info: Info, id: strawberry.ID) -> DeprovisionGrantPayload:
        principal = info.context.caller
        if not principal.is_operator:
            return PermissionDeniedError(
                message="only the operator may deprovision grants", code="PERMISSION_DENIED"
            )
        grant = await info.context.services.provisioning.deprovision_grant(
            str(id), "deprovisioned by the operator"
        )
        return Grant.from_domain(grant)

    @strawberry.mutation(
        permission_classes=OPERATOR,
        description="Operator only: deprovision every grant of a consumer (its tokens stop working, its "
        "jobs are cancelled, its files removed).",
    )
    @domain_errors_as_payload
    async def revoke_consumer(self, info: Info, id: strawberry.ID) -> RevokeConsumerPayload:
        consumer, grants = await info.context.services.provisioning.revoke_consumer(
            str(id), "consumer revoked by the operator"
        )
        return RevokedConsumer(consumer=_consumer(consumer), grants=[Grant.from_domain(g) for g in grants])

    @strawberry.mutation(
        permission_classes=OPERATOR,
        description="Operator only: a new consumer with a grant per asset; its tokens appear here only.",
    )
    @domain_errors_as_payload
    async def create_consumer(self, info: Info, input: CreateConsumerInput) -> CreateConsumerPayload:
        issued = await create_consumer_with_grants(
            info.context.services.store,
            input.name,
            [str(a) for a in input.asset_ids],
            lifetime=input.expires_in,
        )
        return CreatedConsumer(
            consumer=_consumer(issued[0].consumer),
            tokens=[IssuedToken(grant=Grant.from_domain(i.grant), token=i.token) for i in issued],
        )
