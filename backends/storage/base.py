"""The storage protocol every backend implements, its value types and its errors; and
:func:`made_in_thread`, for opening files in worker threads without leaking them on cancel.

Keys are built by the caller from opaque ids only (``consumers/<consumer>/files/<file id>``); a backend
still refuses keys that could escape its root. Writes are streaming and all-or-nothing: an object either
appears whole, with its size and sha256, or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")


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

    async def presign_put(self, key: str, ttl: int, *, size: int | None = None) -> str | None:
        """A URL that accepts the object's bytes for ``ttl`` seconds (exactly ``size`` bytes when given: the
        length is part of what is signed), or None: upload through the API."""
        ...

    async def close(self) -> None: ...


async def made_in_thread(make: Callable[[], T], undo: Callable[[T], object]) -> T:
    """``make()`` in a worker thread. A cancel while it runs there cannot stop it: once it is done,
    ``undo`` takes back what it made (closes the file, removes the temp file), so nothing leaks."""
    making = asyncio.ensure_future(asyncio.to_thread(make))
    try:
        return await asyncio.shield(making)
    except asyncio.CancelledError:

        def take_back(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                undo(done.result())

        making.add_done_callback(take_back)
        raise
