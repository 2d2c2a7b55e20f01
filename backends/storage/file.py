"""Storage on a local directory: one file per object under a root, for one machine or a shared volume.

Writes stream into a hidden temp file (``.tmp-*``) beside the final path, hashing and counting as they go,
then fsync and ``os.replace`` it into place: an object appears whole or not at all, and readers that
already opened the old version keep reading it. Blocking file IO runs in worker threads, one chunk at a
time, so the event loop never blocks and memory stays flat whatever the object size. Temp files are never
visible as objects (their names are not valid keys); ones a crash left behind are swept at construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Self
from urllib.parse import unquote, urlsplit

from backends.storage.base import (
    InvalidKeyError,
    InvalidRangeError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageCredentials,
    StorageError,
    made_in_thread,
)

CHUNK_SIZE = 1024 * 1024  # bytes per read or write handed to a thread
TEMP_PREFIX = ".tmp-"
STALE_TEMP_AGE = 3600.0  # seconds after which a leftover temp file is certainly not being written
MAX_KEY_LENGTH = 1024
MAX_SEGMENT_LENGTH = 255  # NAME_MAX on common filesystems

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_key(key: str) -> list[str]:
    """Split ``key`` into its segments, or raise InvalidKeyError if it could escape or collide."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(key)
    segments = key.split("/")
    for segment in segments:
        if (
            not _SEGMENT.fullmatch(segment)
            or segment in (".", "..")
            or segment.startswith(TEMP_PREFIX)
            or len(segment) > MAX_SEGMENT_LENGTH
        ):
            raise InvalidKeyError(key)
    return segments


class FileStorageBackend:
    """Objects as files under ``root`` (``<root>/<key>``); see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        # Constructed once at start-up (before serving), so this short blocking walk is acceptable.
        sweep_stale_temp_files(self.root, max_age=STALE_TEMP_AGE)

    @classmethod
    def from_url(cls, url: str, *, credentials: StorageCredentials | None = None) -> Self:
        """``file:///abs/path``, ``file://localhost/abs/path``, ``file://rel/path`` or ``file:rel/path``.

        ``credentials`` are ignored: a directory needs none.
        """
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ValueError(f"not a file storage URL: {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("file storage URLs take no query or fragment")
        host = "" if parts.netloc == "localhost" else parts.netloc
        path = unquote(host + parts.path)
        if not path:
            raise ValueError("file storage URL has no path")
        return cls(Path(path))

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key))

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None) -> ObjectInfo:
        path = self._path(key)
        handle, temp = await made_in_thread(lambda: _open_temp(path), lambda made: _discard(*made))
        try:
            size, digest = await _write_all(handle, chunks, max_size)
            await asyncio.to_thread(_commit, handle, temp, path)
        except BaseException:
            await asyncio.to_thread(_discard, handle, temp)
            raise
        return ObjectInfo(key=key, size=size, sha256=digest)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRangeError(f"invalid range: offset={offset} length={length}")
        handle = await made_in_thread(lambda: _open_for_read(path, key), lambda made: made.close())
        try:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:
                raise InvalidRangeError(f"offset {offset} is past the end ({size} bytes)")
            remaining = size - offset if length is None else min(length, size - offset)
            if offset:
                handle.seek(offset)
            while remaining > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK_SIZE, remaining))
                if not chunk:  # truncated underneath us; objects are replaced, never truncated
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            handle.close()

    async def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFoundError(key)
        return ObjectInfo(key=key, size=st.st_size, sha256=None)

    async def delete(self, key_or_prefix: str) -> None:
        if key_or_prefix.endswith("/"):
            path = self._path(key_or_prefix[:-1])
            await asyncio.to_thread(_remove_tree, path)
        else:
            path = self._path(key_or_prefix)
            await asyncio.to_thread(_remove_file, path)

    async def presign_get(self, key: str, ttl: int) -> str | None:
        return None

    async def presign_put(self, key: str, ttl: int, *, size: int | None = None) -> str | None:
        return None

    async def close(self) -> None:
        return None


async def _write_all(
    handle: IO[bytes], chunks: AsyncIterator[bytes], max_size: int | None
) -> tuple[int, str]:
    """Copy ``chunks`` into ``handle`` in ~CHUNK_SIZE writes; return (size, sha256 hex)."""
    hasher = hashlib.sha256()
    size = 0
    pending = bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise ObjectTooLargeError(max_size)
        pending += chunk
        if len(pending) >= CHUNK_SIZE:
            block, pending = bytes(pending), bytearray()
            await asyncio.to_thread(_write_block, handle, hasher.update, block)
    if pending:
        await asyncio.to_thread(_write_block, handle, hasher.update, bytes(pending))
    return size, hasher.hexdigest()


def _write_block(handle: IO[bytes], update: Callable[[bytes], object], block: bytes) -> None:
    update(block)
    handle.write(block)


def _open_temp(path: Path) -> tuple[IO[bytes], Path]:
    for _ in range(3):  # a concurrent prefix delete may remove the directory between the two steps
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        except FileNotFoundError:
            continue
        except (NotADirectoryError, FileExistsError):
            raise StorageError(f"key conflicts with an existing object: {path.name}") from None
        return os.fdopen(fd, "wb"), Path(name)
    raise StorageError("could not create a temporary file: the directory keeps disappearing")


def _commit(handle: IO[bytes], temp: Path, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    try:
        os.replace(temp, path)
    except IsADirectoryError:
        raise StorageError(f"key conflicts with an existing prefix: {path.name}") from None
    _fsync_directory(path.parent)


def _discard(handle: IO[bytes], temp: Path) -> None:
    handle.close()
    temp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_for_read(path: Path, key: str) -> IO[bytes]:
    try:
        handle = path.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise ObjectNotFoundError(key) from None
    if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        handle.close()
        raise ObjectNotFoundError(key)
    return handle


def _remove_file(path: Path) -> None:
    # Missing is success; a prefix (a directory) is not deleted without its trailing "/".
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
        path.unlink()


def _remove_tree(path: Path) -> None:
    for _ in range(3):  # a concurrent delete may remove entries while the tree is walked
        if not path.is_dir() or path.is_symlink():
            return  # nothing under this prefix; an object named like the prefix is not under it
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            continue
        return


def sweep_stale_temp_files(root: Path, *, max_age: float) -> int:
    """Remove ``.tmp-*`` files under ``root`` older than ``max_age`` seconds; return how many."""
    cutoff = time.time() - max_age
    removed = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            candidate = Path(directory, name)
            try:
                if candidate.lstat().st_mtime < cutoff:
                    candidate.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed
