"""Who may call a field: Strawberry permission classes, so no resolver checks the caller itself.

A field that needs a caller lists ``permission_classes=AUTHENTICATED`` (or ``OPERATOR``); its resolver then
reads :attr:`graphql_api.context.Context.caller`, which is never empty there. A refusal is a top-level
:class:`~graphql_api.context.ClientError` with a stable code (``UNAUTHENTICATED``, ``ACCESS_REVOKED``,
``PERMISSION_DENIED``), exactly as the resolvers raised it before.
"""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from graphql_api.context import ClientError


class Authenticated(BasePermission):
    """The request carries a live token: a consumer's of an active grant, or the operator's."""

    def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
        context = info.context
        if context.revoked:
            raise ClientError("access revoked: the token's grant is no longer active", "ACCESS_REVOKED")
        if context.principal is None:
            raise ClientError(
                "authentication required: send 'Authorization: Bearer <token>'", "UNAUTHENTICATED"
            )
        return True


class Operator(Authenticated):
    """The request carries the operator's token."""

    def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
        super().has_permission(source, info, **kwargs)
        if not info.context.principal.is_operator:
            raise ClientError("only the operator may do this", "PERMISSION_DENIED")
        return True


AUTHENTICATED: list[type[BasePermission]] = [Authenticated]
OPERATOR: list[type[BasePermission]] = [Operator]
