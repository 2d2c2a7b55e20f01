"""Cutting a byte stream into multipart parts, and uploading them with a bounded number in flight.

Kept apart from the S3 client so the memory bound is plain to see: the reader holds at most one part plus
one incoming chunk, and :func:`upload_parts` lets at most ``concurrency`` parts be sent at once while the
next one is read. It knows nothing of S3 beyond the rule that part numbers run from 1 to 10,000.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

from backends.storage.base import ObjectTooLargeError

MAX_PARTS = 10_000  # S3's limit on parts per upload


class PartReader:
    """Reads ``chunks`` one part at a time, counting, hashing and enforcing ``max_size`` as it goes."""

    def __init__(self, chunks: AsyncIterator[bytes], part_size: int, max_size: int | None) -> None:
        self._chunks = aiter(chunks)
        self._part_size = part_size
        self._max_size = max_size
        self._buffer = bytearray()
        self._hasher = hashlib.sha256()
        self.size = 0
        self.exhausted = False  # the source has ended and every byte has been handed out

    async def next_part(self) -> bytes | None:
        """The next ``part_size`` bytes (fewer for the last part); None once everything was handed out.

        The first call returns ``b""`` for an empty source, so an empty object is still written.
        """
        ended = False
        while len(self._buffer) < self._part_size:
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                ended = True
                break
            self.size += len(chunk)
            if self._max_size is not None and self.size > self._max_size:
                raise ObjectTooLargeError(self._max_size)
            self._buffer += chunk
        if ended and not self._buffer and self.size > 0:
            self.exhausted = True
            return None
        with memoryview(self._buffer) as view, view[: self._part_size] as head:
            part = bytes(head)  # one copy, not two
        del self._buffer[: self._part_size]
        await asyncio.to_thread(self._hasher.update, part)  # hashlib releases the GIL on large buffers
        if ended and not self._buffer:
            self.exhausted = True
        return part

    def sha256(self) -> str:
        return self._hasher.hexdigest()


async def upload_parts(
    first: bytes,
    reader: PartReader,
    send: Callable[[int, bytes], Awaitable[str]],
    concurrency: int,
) -> dict[int, str]:
    """Send ``first`` and every further part of ``reader`` through ``send(number, body) -> etag``.

    At most ``concurrency`` sends run at once; reading waits while they are all busy, so memory is
    bounded whatever the size. The first failure cancels the other sends and is raised.
    """
    etags: dict[int, str] = {}
    in_flight: set[asyncio.Task[tuple[int, str]]] = set()

    async def numbered(number: int, body: bytes) -> tuple[int, str]:
        return number, await send(number, body)

    async def settle() -> None:
        nonlocal in_flight
        done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            number, etag = task.result()  # raises the send's failure
            etags[number] = etag

    part: bytes | None = first
    number = 1
    try:
        while part is not None:
            if number > MAX_PARTS:
                raise ObjectTooLargeError(MAX_PARTS * len(first))
            while len(in_flight) >= concurrency:
                await settle()
            in_flight.add(asyncio.create_task(numbered(number, part)))
            number += 1
            part = None  # let the part go as soon as its send is done with it
            if not reader.exhausted:
                part = await reader.next_part()
        while in_flight:
            await settle()
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    return etags
