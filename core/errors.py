"""Domain errors: what a caller may expect to go wrong, each with a stable code.

Transports turn these into typed answers (GraphQL union members, HTTP statuses); anything that is not a
``DomainError`` is a bug and is logged and masked.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(DomainError):
    """Unknown id, or an id the caller may not see: the two are answered identically."""

    code = "NOT_FOUND"

    def __init__(self, kind: str, ident: str) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind
        self.ident = ident


class ValidationError(DomainError):
    code = "VALIDATION"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PayloadTooLargeError(ValidationError):
    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"content exceeds the limit of {limit} bytes", field="file")
        self.limit = limit


class PermissionDeniedError(DomainError):
    code = "PERMISSION_DENIED"


class QuotaExceededError(DomainError):
    code = "QUOTA_EXCEEDED"


class ConflictError(DomainError):
    code = "CONFLICT"


class UnavailableError(DomainError):
    """A dependency (storage, workflow backend) cannot be reached right now; retrying may help."""

    code = "UNAVAILABLE"
