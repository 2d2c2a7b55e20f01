"""Expected failures as GraphQL types: every one implements the ``Error`` interface."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar, cast

import strawberry

from core import errors as domain


@strawberry.interface(description="An expected failure; `code` is stable, `message` is for people.")
class Error:
    message: str
    code: str


@strawberry.type(description="The id is unknown, or belongs to somebody else (the two look the same).")
class NotFoundError(Error):
    id: strawberry.ID | None = None


@strawberry.type(description="The request breaks a rule; `field` names the offending input when known.")
class ValidationError(Error):
    field: str | None = None


@strawberry.type
class PermissionDeniedError(Error):
    pass


@strawberry.type(description="A per-consumer limit would be exceeded.")
class QuotaExceededError(Error):
    pass


@strawberry.type(description="The object is in a state that does not allow this.")
class ConflictError(Error):
    pass


@strawberry.type(description="A dependency (storage, backend) is unavailable; retrying later may help.")
class UnavailableError(Error):
    pass


AnyError = (
    NotFoundError
    | ValidationError
    | PermissionDeniedError
    | QuotaExceededError
    | ConflictError
    | UnavailableError
)


P = ParamSpec("P")
T = TypeVar("T")


def to_graphql(e: domain.DomainError) -> AnyError:
    match e:
        case domain.NotFoundError():
            return NotFoundError(message=e.message, code=e.code, id=strawberry.ID(e.ident))
        case domain.ValidationError():
            return ValidationError(message=e.message, code=e.code, field=e.field)
        case domain.PermissionDeniedError():
            return PermissionDeniedError(message=e.message, code=e.code)
        case domain.QuotaExceededError():
            return QuotaExceededError(message=e.message, code=e.code)
        case domain.ConflictError():
            return ConflictError(message=e.message, code=e.code)
        case _:
            return UnavailableError(message=e.message, code=e.code)


def domain_errors_as_payload(resolver: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A mutation's expected failures become its union payload's error member.

    The resolver raises :class:`core.errors.DomainError` like any service call; the wrapper returns the
    matching GraphQL error type (each payload union lists them), so no resolver repeats the mapping.
    ``functools.wraps`` keeps the signature and annotations Strawberry reads.
    """

    @functools.wraps(resolver)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await resolver(*args, **kwargs)
        except domain.DomainError as e:
            return cast(T, to_graphql(e))  # every payload union holds the error types

    return wrapper
