"""The storage protocol every backend implements, its value types and its errors.

Keys are built by the caller from opaque ids only (``consumers/<consumer>/files/<file id>``); a backend
still refuses keys that could escape its root. Writes are streaming and all-or-nothing: an object either
appears whole, with its size and sha256, or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None = None  # hex; None when the backend cannot know it without reading (stat only)


@dataclass(frozen=True, slots=True)
class StorageCredentials:
    """Explicit credentials for a storage server (S3 access keys); the secret never shows in a repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)


class StorageError(Exception):
    """Base of every storage failure; messages never contain credentials."""


class ObjectNotFoundError(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ObjectTooLargeError(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"object exceeds the limit of {limit} bytes")
        self.limit = limit


class InvalidKeyError(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"invalid storage key: {key!r}")
        self.key = key


class InvalidRangeError(StorageError):
    pass


class StorageUnavailableError(StorageError):
    """The storage server cannot be reached or failed; the operation may be retried."""


@runtime_checkable
class StorageBackend(Protocol):
    async def put(self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None) -> ObjectInfo:
        """Stream ``chunks`` into ``key``; replaces an existing object atomically.

        Raises ObjectTooLargeError as soon as more than ``max_size`` bytes arrive (nothing is left behind).
        """
        ...

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's bytes from ``offset`` (``length`` bytes, or to the end).

        Raises ObjectNotFoundError (on first iteration) for a missing key, InvalidRangeError when
        ``offset`` is past the end.
        """
        ...

    async def stat(self, key: str) -> ObjectInfo: ...

    async def delete(self, key_or_prefix: str) -> None:
        """Delete one object, or every object under a prefix ending in ``/``. Missing is success."""
        ...

    async def presign_get(self, key: str, ttl: int) -> str | None:
        """A URL that serves the object for ``ttl`` seconds, or None: serve it through the API."""
        ...

    async def presign_put(self, key: str, ttl: int) -> str | None:
        """A URL that accepts the object's bytes for ``ttl`` seconds, or None: upload through the API."""
        ...

    async def close(self) -> None: ...
