"""Cutting a stream into parts and sending them with a bounded number in flight (no server needed)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from backends.storage.base import ObjectTooLargeError
from backends.storage.s3.parts import PartReader, upload_parts


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def all_parts(reader: PartReader) -> list[bytes]:
    parts = []
    while not reader.exhausted:
        part = await reader.next_part()
        if part is not None:
            parts.append(part)
    return parts


async def test_parts_have_the_part_size_except_the_last() -> None:
    reader = PartReader(chunks(b"a" * 7, b"b" * 7, b"c"), part_size=4, max_size=None)

    parts = await all_parts(reader)

    assert [len(p) for p in parts] == [4, 4, 4, 3]
    assert b"".join(parts) == b"a" * 7 + b"b" * 7 + b"c"
    assert (reader.size, reader.sha256()) == (15, hashlib.sha256(b"".join(parts)).hexdigest())


async def test_an_empty_source_is_one_empty_part() -> None:
    reader = PartReader(chunks(), part_size=4, max_size=None)

    assert await all_parts(reader) == [b""]


async def test_a_source_of_exactly_one_part_ends_after_it() -> None:
    reader = PartReader(chunks(b"abcd"), part_size=4, max_size=None)

    assert await reader.next_part() == b"abcd"
    assert not reader.exhausted  # the end is seen only on the next read
    assert await reader.next_part() is None
    assert reader.exhausted


async def test_the_limit_is_enforced_while_reading() -> None:
    reader = PartReader(chunks(b"x" * 4, b"x" * 4, b"x"), part_size=4, max_size=8)

    assert await reader.next_part() == b"xxxx"
    assert await reader.next_part() == b"xxxx"
    with pytest.raises(ObjectTooLargeError):
        await reader.next_part()


async def test_no_more_than_concurrency_parts_are_sent_or_read_ahead() -> None:
    produced = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(40):
            produced += 1
            yield b"p"

    release = asyncio.Event()
    running = peak = 0
    sent: list[int] = []

    async def send(number: int, body: bytes) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        sent.append(number)
        return f"etag-{number}"

    reader = PartReader(source(), part_size=1, max_size=None)
    first = await reader.next_part()
    assert first is not None
    task = asyncio.create_task(upload_parts(first, reader, send, concurrency=3))
    await asyncio.sleep(0.05)

    assert running == 3
    assert produced <= 3 + 1  # reading waits while every send is busy: memory stays bounded
    release.set()
    etags = await task
    assert peak == 3
    assert etags == {n: f"etag-{n}" for n in range(1, 41)}
    assert sorted(sent) == list(range(1, 41))


async def test_a_failed_send_cancels_the_others_and_is_raised() -> None:
    cancelled = 0

    async def send(number: int, body: bytes) -> str:
        nonlocal cancelled
        if number == 2:
            raise RuntimeError("part 2 failed")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return "never"

    reader = PartReader(chunks(*[b"p"] * 10), part_size=1, max_size=None)
    first = await reader.next_part()
    assert first is not None

    with pytest.raises(RuntimeError, match="part 2 failed"):
        await upload_parts(first, reader, send, concurrency=4)
    assert cancelled >= 1
