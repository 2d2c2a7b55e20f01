"""The contract every storage backend passes (parametrized over the backends in conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from backends.storage.base import (
    InvalidKeyError,
    InvalidRangeError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageBackend,
)

if TYPE_CHECKING:
    from conftest import StorageHarness

MiB = 1024 * 1024


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read(storage: StorageBackend, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key, offset=offset, length=length)])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_put_then_get_returns_the_bytes_size_and_sha256(storage: StorageBackend) -> None:
    info = await storage.put("consumers/c1/files/f1", chunks(b"hello ", b"", b"world"))

    assert (info.key, info.size, info.sha256) == ("consumers/c1/files/f1", 11, sha(b"hello world"))
    assert await read(storage, "consumers/c1/files/f1") == b"hello world"
    stat = await storage.stat("consumers/c1/files/f1")
    assert (stat.key, stat.size) == ("consumers/c1/files/f1", 11)
    assert stat.sha256 in (None, sha(b"hello world"))


async def test_empty_object_roundtrips(storage: StorageBackend) -> None:
    info = await storage.put("empty", chunks())

    assert (info.size, info.sha256) == (0, sha(b""))
    assert await read(storage, "empty") == b""
    assert (await storage.stat("empty")).size == 0


async def test_large_object_streams_in_bounded_chunks(storage: StorageBackend) -> None:
    block = bytes(range(256)) * 1024  # 256 KiB
    expected = hashlib.sha256()
    for index in range(80):
        expected.update(block[index:] + block[:index])

    async def twenty_mib() -> AsyncIterator[bytes]:
        for index in range(80):
            yield block[index:] + block[:index]

    info = await storage.put("big", twenty_mib())

    assert (info.size, info.sha256) == (20 * MiB, expected.hexdigest())
    received = hashlib.sha256()
    sizes = []
    async for chunk in storage.get("big"):
        received.update(chunk)
        sizes.append(len(chunk))
    assert received.hexdigest() == expected.hexdigest()
    assert sum(sizes) == 20 * MiB
    assert max(sizes) <= 8 * MiB  # streamed, not one 20 MiB read


async def test_exceeding_max_size_raises_and_leaves_nothing(storage_harness: StorageHarness) -> None:
    storage = storage_harness.backend
    before = await storage_harness.raw_listing()

    with pytest.raises(ObjectTooLargeError):
        await storage.put("limited", chunks(b"x" * 600, b"y" * 600), max_size=1000)

    with pytest.raises(ObjectNotFoundError):
        await storage.stat("limited")
    assert await storage_harness.raw_listing() == before


async def test_exactly_max_size_is_accepted(storage: StorageBackend) -> None:
    info = await storage.put("limited", chunks(b"x" * 500, b"y" * 500), max_size=1000)

    assert info.size == 1000


async def test_failed_overwrite_keeps_the_previous_version(storage: StorageBackend) -> None:
    await storage.put("doc", chunks(b"version one"))

    with pytest.raises(ObjectTooLargeError):
        await storage.put("doc", chunks(b"version two is too long"), max_size=12)

    assert await read(storage, "doc") == b"version one"


DATA = bytes(range(100))


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, DATA),
        (10, None, DATA[10:]),
        (10, 5, DATA[10:15]),
        (0, 0, b""),
        (95, 50, DATA[95:]),  # a length past the end reads to the end
        (100, None, b""),  # offset == size: nothing to read, not an error
        (100, 10, b""),
    ],
)
async def test_ranges(storage: StorageBackend, offset: int, length: int | None, expected: bytes) -> None:
    await storage.put("ranged", chunks(DATA))

    assert await read(storage, "ranged", offset=offset, length=length) == expected


async def test_offset_past_the_end_is_an_invalid_range(storage: StorageBackend) -> None:
    await storage.put("ranged", chunks(DATA))

    with pytest.raises(InvalidRangeError):
        await read(storage, "ranged", offset=101)


async def test_missing_key_is_not_found_on_get_and_stat(storage: StorageBackend) -> None:
    with pytest.raises(ObjectNotFoundError):
        await read(storage, "nope/nothing")
    with pytest.raises(ObjectNotFoundError):
        await storage.stat("nope/nothing")


async def test_delete_one_key(storage: StorageBackend) -> None:
    await storage.put("jobs/1/out", chunks(b"1"))
    await storage.put("jobs/1/outer", chunks(b"2"))

    await storage.delete("jobs/1/out")

    with pytest.raises(ObjectNotFoundError):
        await storage.stat("jobs/1/out")
    assert await read(storage, "jobs/1/outer") == b"2"


async def test_delete_of_missing_key_or_prefix_is_success(storage: StorageBackend) -> None:
    await storage.delete("never/was")
    await storage.delete("never/was/")


async def test_delete_prefix_removes_the_subtree_only(storage: StorageBackend) -> None:
    for key in ["jobs/1/out", "jobs/1/logs/full", "jobs/2/out", "jobs10/out"]:
        await storage.put(key, chunks(key.encode()))

    await storage.delete("jobs/1/")

    for key in ["jobs/1/out", "jobs/1/logs/full"]:
        with pytest.raises(ObjectNotFoundError):
            await storage.stat(key)
    assert await read(storage, "jobs/2/out") == b"jobs/2/out"
    assert await read(storage, "jobs10/out") == b"jobs10/out"


async def test_overwrite_is_atomic_for_readers(storage: StorageBackend) -> None:
    old, new = b"a" * (2 * MiB), b"b" * (2 * MiB)
    await storage.put("doc", chunks(old))
    halfway, resume = asyncio.Event(), asyncio.Event()

    async def slow_new_version() -> AsyncIterator[bytes]:
        yield new[:MiB]
        halfway.set()
        await resume.wait()
        yield new[MiB:]

    writer = asyncio.create_task(storage.put("doc", slow_new_version()))
    await halfway.wait()
    assert await read(storage, "doc") == old  # a half-written new version is never visible
    resume.set()
    await writer

    assert await read(storage, "doc") == new


async def test_concurrent_writers_of_one_key_leave_one_whole_version(storage: StorageBackend) -> None:
    versions = [bytes([65 + i]) * (MiB + i) for i in range(5)]

    await asyncio.gather(*(storage.put("contended", chunks(v[:1000], v[1000:])) for v in versions))

    assert await read(storage, "contended") in versions


async def test_concurrent_writers_of_different_keys(storage: StorageBackend) -> None:
    payloads = {f"consumers/c/files/{i}": bytes([i]) * (i * 50_000 + 1) for i in range(20)}

    infos = await asyncio.gather(*(storage.put(k, chunks(v[:7], v[7:])) for k, v in payloads.items()))

    for info in infos:
        assert info.sha256 == sha(payloads[info.key])
    for key, value in payloads.items():
        assert await read(storage, key) == value


class Boom(Exception):
    pass


async def test_chunk_iterator_raising_midway_leaves_nothing(storage_harness: StorageHarness) -> None:
    storage = storage_harness.backend
    before = await storage_harness.raw_listing()

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * (3 * MiB)
        raise Boom

    with pytest.raises(Boom):
        await storage.put("broken", failing())

    with pytest.raises(ObjectNotFoundError):
        await storage.stat("broken")
    assert await storage_harness.raw_listing() == before


async def test_cancelled_put_leaves_nothing(storage_harness: StorageHarness) -> None:
    storage = storage_harness.backend
    before = await storage_harness.raw_listing()
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * (2 * MiB)
        started.set()
        await asyncio.Event().wait()
        yield b"never"

    writer = asyncio.create_task(storage.put("cancelled", stalls()))
    await started.wait()
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer

    with pytest.raises(ObjectNotFoundError):
        await storage.stat("cancelled")
    assert await storage_harness.raw_listing() == before


INVALID_KEYS = ["../x", "/abs", "a//b", "a/./b", "a/../b", "..", ".", "a\x00b", "", "a/", "a b", "a/b\\c"]


@pytest.mark.parametrize("key", INVALID_KEYS)
async def test_invalid_keys_are_refused(storage_harness: StorageHarness, key: str) -> None:
    storage = storage_harness.backend

    with pytest.raises(InvalidKeyError):
        await storage.put(key, chunks(b"data"))
    with pytest.raises(InvalidKeyError):
        await read(storage, key)
    with pytest.raises(InvalidKeyError):
        await storage.stat(key)
    if not key.endswith("/"):  # "a/" is a valid prefix to delete
        with pytest.raises(InvalidKeyError):
            await storage.delete(key)
    assert await storage_harness.raw_listing() == []


async def test_presigned_urls_are_strings_or_none(storage: StorageBackend) -> None:
    await storage.put("doc", chunks(b"x"))

    assert isinstance(await storage.presign_get("doc", 60), str | None)
    assert isinstance(await storage.presign_put("doc", 60), str | None)


def test_backend_satisfies_the_protocol(storage: StorageBackend) -> None:
    assert isinstance(storage, StorageBackend)
