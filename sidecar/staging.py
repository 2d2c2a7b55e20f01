"""Stage-in and stage-out: move a job's inputs from storage into place and its outputs back to storage.

Both steps stream in chunks (memory stays flat whatever the size), do blocking file IO in threads, retry
transient storage errors (StorageUnavailableError) with bounded exponential backoff, and never trust the
paths they are given: every path must stay inside its root and links are not followed. Stage-in verifies
each input's size and sha256 before placing it; stage-out writes the output manifest as its very last act,
so a manifest on disk means every upload it lists has finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

import structlog

from backends.storage.base import (
    ObjectInfo,
    StorageBackend,
    StorageError,
    StorageUnavailableError,
    made_in_thread,
)
from sidecar.archives import default_extraction_limit, tar_directory_stream
from sidecar.dotenv import read_dotenv
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.extractor import extract_in_child
from sidecar.manifest import (
    InputEntry,
    OutputEntry,
    OutputManifest,
    StageInManifest,
    StageOutManifest,
    UploadedObject,
)
from sidecar.urlstorage import UrlStorage

__all__ = ["DEFAULT_RETRY", "RetryPolicy", "read_dotenv", "stage_in", "stage_out"]

CHUNK_SIZE = 1024 * 1024
T = TypeVar("T")
log = structlog.get_logger("wml.sidecar")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a transfer that failed with StorageUnavailableError."""

    attempts: int = 4
    base_delay: float = 0.5  # seconds before the second attempt; doubles each time
    max_delay: float = 8.0

    def delay(self, failures: int) -> float:
        return min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))


DEFAULT_RETRY = RetryPolicy()


async def _retrying(operation: Callable[[], Awaitable[T]], retry: RetryPolicy, what: str) -> T:
    attempts = max(1, retry.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return await operation()
        except StorageUnavailableError as e:
            if attempt == attempts:
                raise
            log.warning("storage_unavailable_retrying", what=what, attempt=attempt, error=str(e))
            await asyncio.sleep(retry.delay(attempt))
    raise AssertionError("unreachable")


def _inside(root: Path, relative: str, *, may_be_root: bool = False) -> Path | None:
    """``root/relative`` if ``relative`` is a plain relative path that stays lexically inside root.

    ``"."`` (root itself) is accepted only when ``may_be_root``: an output may be the whole directory.
    """
    pure = PurePosixPath(relative)
    if "\x00" in relative or "\\" in relative or pure.is_absolute() or ".." in pure.parts:
        return None
    if not pure.parts and not (may_be_root and relative in (".", "./")):
        return None
    return root.joinpath(*pure.parts)


def _reaches_through_link(root: Path, target: Path) -> bool:
    """True if any existing component of ``target`` below ``root`` is a symbolic link."""
    return target.resolve() != root.resolve().joinpath(target.relative_to(root))


# --- stage-in ----------------------------------------------------------------------------------------


async def stage_in(
    storage: StorageBackend,
    manifest: StageInManifest,
    inputs_root: Path,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    max_extracted_size: int | None = None,
) -> None:
    """Fetch, verify and place every input under ``inputs_root``; InputStagingError on the first failure.

    ``max_extracted_size`` caps what one archive may extract to (default: see sidecar.archives).
    """
    for entry in manifest.inputs:
        target = _inside(inputs_root, entry.path)
        if target is None or await asyncio.to_thread(_reaches_through_link, inputs_root, target):
            raise InputStagingError(f"input {entry.slot!r}: path {entry.path!r} must stay inside the inputs")
        try:
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        except OSError as e:
            raise InputStagingError(f"input {entry.slot!r}: cannot create its directory: {e.strerror}") from e
        temp = await _download(storage, entry, target.parent, retry)
        try:
            if entry.kind == "archive":  # parsed in a child process: see sidecar.extractor
                limit = (
                    default_extraction_limit(entry.size) if max_extracted_size is None else max_extracted_size
                )
                await extract_in_child(temp, target, max_extracted_size=limit)
            else:
                await asyncio.to_thread(_place, entry, temp, target)
        finally:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
        log.info("input_staged", slot=entry.slot, kind=entry.kind, size=entry.size)


async def _download(storage: StorageBackend, entry: InputEntry, directory: Path, retry: RetryPolicy) -> Path:
    """Stream the object into a hidden temp file in ``directory`` and verify it; return the temp path."""
    try:
        fd, name = await made_in_thread(
            lambda: tempfile.mkstemp(prefix=".stage-", dir=directory), lambda made: _discard_temp(*made)
        )
    except OSError as e:
        raise InputStagingError(f"input {entry.slot!r}: cannot write it: {e.strerror}") from e
    temp = Path(name)
    handle = os.fdopen(fd, "wb")
    try:
        await _retrying(lambda: _fetch_into(storage, entry, handle), retry, f"input {entry.slot}")
    except BaseException as e:
        await asyncio.to_thread(handle.close)
        await asyncio.to_thread(temp.unlink, missing_ok=True)
        if isinstance(e, StorageError):
            raise InputStagingError(f"input {entry.slot!r}: cannot fetch it from storage: {e}") from e
        if isinstance(e, OSError):
            raise InputStagingError(f"input {entry.slot!r}: cannot write it: {e.strerror or e}") from e
        raise
    await asyncio.to_thread(handle.close)
    return temp


async def _fetch_into(storage: StorageBackend, entry: InputEntry, handle: IO[bytes]) -> None:
    """One attempt: (re)write ``handle`` from the start with the object, checking size and sha256."""
    await asyncio.to_thread(_rewind, handle)
    hasher = hashlib.sha256()
    size = 0
    stream = storage.get(entry.key)
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > entry.size:
                raise InputStagingError(f"input {entry.slot!r}: larger than the expected {entry.size} bytes")
            await asyncio.to_thread(_write_block, handle, hasher.update, chunk)
    finally:
        await _aclose(stream)
    if size != entry.size:
        raise InputStagingError(f"input {entry.slot!r}: {size} bytes where {entry.size} were expected")
    if hasher.hexdigest() != entry.sha256.lower():
        raise InputStagingError(f"input {entry.slot!r}: sha256 does not match; the object is corrupt")


async def _aclose(stream: AsyncIterator[bytes]) -> None:
    """Finish a stream we stopped reading now (closing its file or connection), not at garbage collection."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _discard_temp(fd: int, name: str) -> None:
    os.close(fd)
    Path(name).unlink(missing_ok=True)


def _rewind(handle: IO[bytes]) -> None:
    handle.seek(0)
    handle.truncate()


def _write_block(handle: IO[bytes], update: Callable[[bytes], object], block: bytes) -> None:
    update(block)
    handle.write(block)


def _place(entry: InputEntry, temp: Path, target: Path) -> None:
    """Blocking: put the verified download (a file, not an archive) where the worker expects it."""
    if entry.kind == "env":
        try:
            read_dotenv(temp)
        except ValueError as e:
            raise InputStagingError(f"input {entry.slot!r}: not a valid dotenv file: {e}") from e
    os.chmod(temp, 0o644)  # the worker may run as another user than the side-car
    try:
        os.replace(temp, target)
    except OSError as e:
        raise InputStagingError(f"input {entry.slot!r}: cannot place it: {e.strerror}") from e


# --- stage-out ---------------------------------------------------------------------------------------


async def stage_out(
    storage: StorageBackend,
    manifest: StageOutManifest,
    outputs_root: Path,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> OutputManifest:
    """Upload every declared output (a directory as a tar) and the log, then write the result manifest.

    Outputs that are absent, symbolic links, reached through a link, or neither file nor directory are
    listed as missing. Raises OutputUploadError when an upload fails after retries (no manifest written).
    """
    result_path = Path(manifest.result_path)
    await asyncio.to_thread(result_path.unlink, missing_ok=True)  # a stale manifest must not be read
    result = OutputManifest()
    for entry in manifest.outputs:
        uploaded = await _upload_output(storage, entry, outputs_root, retry)
        if uploaded is None:
            result.missing.append(entry.name)
        else:
            result.outputs.append(uploaded)
    if manifest.log_path and manifest.log_key:
        log_path = Path(manifest.log_path)
        if await asyncio.to_thread(_kind_of, log_path) == "file":
            result.log = await _upload(storage, "log", manifest.log_key, lambda: file_chunks(log_path), retry)
    await asyncio.to_thread(_write_atomically, result_path, result.model_dump_json(indent=2))
    log.info("outputs_staged", uploaded=len(result.outputs), missing=result.missing)
    return result


async def _upload_output(
    storage: StorageBackend, entry: OutputEntry, outputs_root: Path, retry: RetryPolicy
) -> UploadedObject | None:
    target = _inside(outputs_root, entry.path, may_be_root=True)
    if target is None:
        raise OutputUploadError(f"output {entry.name!r}: path {entry.path!r} must stay inside the outputs")
    kind = await asyncio.to_thread(_kind_of, target)
    if kind is not None and await asyncio.to_thread(_reaches_through_link, outputs_root, target):
        kind = "link"
    if kind == "file":
        size = lambda: asyncio.to_thread(lambda: target.lstat().st_size)  # noqa: E731
        return await _upload(storage, entry.name, entry.key, lambda: file_chunks(target), retry, size)
    if kind == "directory":
        return await _upload(storage, entry.name, entry.key, lambda: tar_directory_stream(target), retry)
    if kind is not None:
        log.warning("output_refused", output=entry.name, kind=kind)
    return None


def _kind_of(path: Path) -> str | None:
    """ "file", "directory", "link" or "special" without following a final link; None if absent."""
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return "link" if stat.S_ISLNK(mode) else "special"


async def _upload(
    storage: StorageBackend,
    name: str,
    key: str,
    chunks: Callable[[], AsyncIterator[bytes]],
    retry: RetryPolicy,
    size_of: Callable[[], Awaitable[int]] | None = None,
) -> UploadedObject:
    """Upload a fresh stream from ``chunks()`` per attempt; size and sha256 are checked end to end.

    Through presigned URLs (:class:`~sidecar.urlstorage.UrlStorage`) the size goes first: ``size_of()``,
    else the stream is read once to count it (a directory's tar), then again to send it.
    """
    tally = _Tally()
    size = None
    if isinstance(storage, UrlStorage):
        size = await (size_of() if size_of is not None else _length(chunks))

    async def attempt() -> ObjectInfo:
        stream = tally.counting(chunks())
        try:
            if isinstance(storage, UrlStorage):
                return await storage.put(key, stream, size=size)
            return await storage.put(key, stream)
        finally:
            await _aclose(stream)

    try:
        info = await _retrying(attempt, retry, f"output {name}")
    except StorageError as e:
        raise OutputUploadError(f"output {name!r}: upload failed: {e}") from e
    except OSError as e:
        raise OutputUploadError(f"output {name!r}: cannot read it: {e.strerror or e}") from e
    if info.size != tally.size or (info.sha256 is not None and info.sha256 != tally.sha256):
        raise OutputUploadError(f"output {name!r}: storage recorded different bytes than were sent")
    return UploadedObject(name=name, key=key, size=tally.size, sha256=tally.sha256)


async def _length(chunks: Callable[[], AsyncIterator[bytes]]) -> int:
    """The number of bytes a fresh stream from ``chunks()`` yields."""
    total = 0
    stream = chunks()
    try:
        async for chunk in stream:
            total += len(chunk)
    finally:
        await _aclose(stream)
    return total


class _Tally:
    """Size and sha256 of the last stream passed through :meth:`counting`."""

    def __init__(self) -> None:
        self.size = 0
        self.sha256 = hashlib.sha256().hexdigest()

    async def counting(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        hasher, self.size = hashlib.sha256(), 0
        try:
            async for chunk in chunks:
                hasher.update(chunk)
                self.size += len(chunk)
                yield chunk
        finally:
            await _aclose(chunks)
        self.sha256 = hasher.hexdigest()


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The bytes of the file at ``path`` (never through a symbolic link), a chunk at a time."""
    fd = await made_in_thread(lambda: os.open(path, os.O_RDONLY | os.O_NOFOLLOW), os.close)
    with os.fdopen(fd, "rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK_SIZE):
            yield chunk


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(name, 0o644)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
