"""Completing an upload whose bytes went straight to storage: check them before the file can be used.

With a storage backend that offers presigned URLs (S3), ``createUpload`` hands the client a URL that
writes to storage directly, so large uploads never pass through the API. Such a URL accepts any bytes of
any size, so ``completeUpload`` re-derives both from storage rather than trusting the client: a stat
first (cheap, and refuses what is over the limit before reading a byte), then one streamed read for the
sha256 (memory stays flat whatever the size). The file becomes READY only when the size and the sha256
match what was announced and the size fits the limit; otherwise the object is deleted and the file stays
PENDING (the client may PUT again while its URL lives; the sweeper removes it when it expires).
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from backends.storage.base import ObjectInfo, ObjectNotFoundError, StorageBackend, StorageError
from core.errors import ConflictError, UnavailableError, ValidationError
from core.models import FileRecord
from core.signing import UrlSigner


async def upload_url(
    storage: StorageBackend, signer: UrlSigner, file_id: str, key: str, ttl: int, size: int | None
) -> tuple[str, int]:
    """Where the client PUTs the bytes: a presigned storage URL bound to the announced ``size`` when the
    backend offers one, else ours (always ours when no size was announced: a storage URL would accept any
    number of bytes, ours stops at the limit).

    Returns the URL and its expiry (Unix seconds).
    """
    if size is None:
        return signer.url("PUT", file_id, ttl)
    try:
        presigned = await storage.presign_put(key, ttl, size=size)
    except StorageError as e:
        raise UnavailableError(f"storage failed: {e}") from e
    if presigned is None:
        return signer.url("PUT", file_id, ttl)
    return presigned, int(time.time()) + ttl


async def verify_upload(storage: StorageBackend, record: FileRecord, limit: int) -> ObjectInfo:
    """The size and sha256 of ``record``'s object, checked against its announcement and ``limit``.

    Raises ConflictError when no bytes have arrived yet, ValidationError (after deleting the object)
    when they do not match, UnavailableError when storage fails.
    """
    key = record.storage_key
    try:
        size = (await storage.stat(key)).size
        problem = _problem(record, size, None, limit)
        digest = None
        if problem is None:
            size, digest = await _measure(storage, key)
            problem = _problem(record, size, digest, limit)
    except ObjectNotFoundError:
        raise ConflictError("the upload has not arrived yet: PUT its bytes to the upload URL first") from None
    except StorageError as e:
        raise UnavailableError(f"storage failed: {e}") from e
    if problem is not None or digest is None:
        try:
            await storage.delete(key)
        except StorageError as e:
            raise UnavailableError(f"storage failed: {e}") from e
        raise ValidationError(problem or "the upload could not be verified", field="content")
    return ObjectInfo(key=key, size=size, sha256=digest)


def _problem(record: FileRecord, size: int, digest: str | None, limit: int) -> str | None:
    if size > limit:
        return f"the upload has {size} bytes, over the limit of {limit}"
    if record.expected_size is not None and size != record.expected_size:
        return f"received {size} bytes but {record.expected_size} were announced"
    if digest is not None and record.expected_sha256 is not None and digest != record.expected_sha256:
        return "content does not match the announced sha256"
    return None


async def _measure(storage: StorageBackend, key: str) -> tuple[int, str]:
    """Read the object once, in chunks, for its size and sha256."""
    hasher = hashlib.sha256()
    size = 0
    stream = storage.get(key)
    try:
        async for chunk in stream:
            size += len(chunk)
            await asyncio.to_thread(hasher.update, chunk)  # hashlib releases the GIL on large buffers
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return size, hasher.hexdigest()
