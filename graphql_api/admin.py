"""Operator-only queries and mutations: grants and their deprovisioning."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import strawberry

from core import models as M
from graphql_api.context import Context
from graphql_api.errors import NotFoundError, PermissionDeniedError, domain_errors_as_payload
from graphql_api.permissions import AUTHENTICATED, OPERATOR

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


DeprovisionGrantPayload = Annotated[
    Grant | NotFoundError | PermissionDeniedError, strawberry.union("DeprovisionGrantPayload")
]


@strawberry.type
class AdminQuery:
    @strawberry.field(permission_classes=OPERATOR, description="Operator only: every grant, oldest first.")
    async def grants(self, info: Info, state: GrantState | None = None) -> list[Grant]:
        found = await info.context.services.provisioning.list_grants()
        return [Grant.from_domain(g) for g in found if state is None or g.state.value == state.value]


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
