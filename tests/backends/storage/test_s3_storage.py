"""What the S3 backend adds to the contract: multipart uploads that never leave parts behind, a server that
goes away mid-transfer, error translation, presigned URLs, prefixes and credentials (moto on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from backends.storage.base import (
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StorageUnavailableError,
)
from backends.storage.s3 import backend as s3_module
from backends.storage.s3.backend import S3StorageBackend
from tests.support.s3 import BUCKET, CREDENTIALS, S3Server, bucket_contents, raw_client, s3_link

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 (and moto) accepts


def backend(server: S3Server, *, endpoint: str | None = None, **params: Any) -> S3StorageBackend:
    return S3StorageBackend.from_url(
        server.url(endpoint=endpoint, part_size=PART, **params), credentials=CREDENTIALS
    )


async def stream(total: int, chunk: int = MiB, seed: int = 0) -> AsyncIterator[bytes]:
    for index in range(0, total, chunk):
        yield bytes([(seed + index // chunk) % 251]) * min(chunk, total - index)


def expected(total: int, chunk: int = MiB, seed: int = 0) -> bytes:
    return b"".join(
        bytes([(seed + i // chunk) % 251]) * min(chunk, total - i) for i in range(0, total, chunk)
    )


async def read(storage: S3StorageBackend, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key)])


async def etag(server: S3Server, key: str) -> str:
    async with raw_client(server.endpoint) as client:
        head = await client.head_object(Bucket=BUCKET, Key=key)
    return head["ETag"].strip('"')


class Boom(Exception):
    pass


# -- multipart ------------------------------------------------------------------------------------------


async def test_object_larger_than_a_part_goes_up_in_parts(s3: S3Server) -> None:
    storage = backend(s3)
    try:
        info = await storage.put("big", stream(12 * MiB))

        assert (info.size, info.sha256) == (12 * MiB, hashlib.sha256(expected(12 * MiB)).hexdigest())
        assert (await etag(s3, "big")).endswith("-3")  # 5 + 5 + 2 MiB
        assert await read(storage, "big") == expected(12 * MiB)
    finally:
        await storage.close()


async def test_object_smaller_than_a_part_is_a_single_put(s3: S3Server) -> None:
    storage = backend(s3)
    try:
        await storage.put("small", stream(3 * MiB))

        assert "-" not in await etag(s3, "small")
    finally:
        await storage.close()


async def test_source_failing_after_some_parts_aborts_the_upload(s3: S3Server) -> None:
    storage = backend(s3)

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in stream(12 * MiB):
            yield chunk
        raise Boom

    try:
        with pytest.raises(Boom):
            await storage.put("broken", failing())

        assert await bucket_contents(s3.endpoint) == []  # no object, no unfinished multipart upload
    finally:
        await storage.close()


async def test_limit_exceeded_after_a_part_was_sent_aborts_the_upload(s3: S3Server) -> None:
    storage = backend(s3)
    try:
        with pytest.raises(ObjectTooLargeError):
            await storage.put("limited", stream(12 * MiB), max_size=7 * MiB)

        assert await bucket_contents(s3.endpoint) == []
    finally:
        await storage.close()


async def test_cancelled_multipart_upload_is_aborted(s3: S3Server) -> None:
    storage = backend(s3)
    stalled = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        async for chunk in stream(11 * MiB):
            yield chunk
        stalled.set()
        await asyncio.Event().wait()
        yield b"never"

    try:
        writer = asyncio.create_task(storage.put("cancelled", stalls()))
        await stalled.wait()
        await _until(lambda contents: "multipart:cancelled" in contents, s3)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer

        assert await bucket_contents(s3.endpoint) == []
    finally:
        await storage.close()


async def _until(condition: Any, server: S3Server, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition(await bucket_contents(server.endpoint)):
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


# -- the server going away ------------------------------------------------------------------------------


async def test_server_gone_mid_upload_is_unavailable_and_leaves_nothing_once_back(s3: S3Server) -> None:
    async with s3_link(s3) as link:
        storage = backend(s3, endpoint=link.endpoint, max_attempts=2)
        try:
            link.cut_after(7 * MiB)  # inside the second part

            with pytest.raises(StorageUnavailableError, match="unavailable"):
                await storage.put("interrupted", stream(12 * MiB))

            await link.restore()
            # Never a partial object; the abort could not reach the server, so the upload is still open...
            assert await bucket_contents(s3.endpoint) == ["multipart:interrupted"]
            await storage.put("after", stream(10))  # ...until the next write aborts it

            assert await bucket_contents(s3.endpoint) == ["after"]
        finally:
            await storage.close()


async def test_close_aborts_uploads_left_by_an_outage(s3: S3Server) -> None:
    async with s3_link(s3) as link:
        storage = backend(s3, endpoint=link.endpoint, max_attempts=1)
        link.cut_after(6 * MiB)
        with pytest.raises(StorageUnavailableError):
            await storage.put("interrupted", stream(12 * MiB))
        await link.restore()
        assert await bucket_contents(s3.endpoint) == ["multipart:interrupted"]

        await storage.close()

        assert await bucket_contents(s3.endpoint) == []


async def test_server_gone_mid_download_is_unavailable(s3: S3Server) -> None:
    await _put_direct(s3, "doc", expected(12 * MiB))
    async with s3_link(s3) as link:
        storage = backend(s3, endpoint=link.endpoint, max_attempts=1)
        received = 0

        async def download() -> None:
            nonlocal received
            async for chunk in storage.get("doc"):
                received += len(chunk)
                link.cut()

        try:
            with pytest.raises(StorageUnavailableError):
                await download()
            assert 0 < received < 12 * MiB
        finally:
            await storage.close()


async def test_unreachable_server_is_unavailable_without_leaking_credentials(s3: S3Server) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    storage = backend(s3, endpoint=dead, max_attempts=1)
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            await storage.stat("anything")
        with pytest.raises(StorageUnavailableError):
            await storage.put("anything", stream(10))
    finally:
        await storage.close()

    chain = [caught.value, caught.value.__cause__]
    assert all(CREDENTIALS.secret_access_key not in f"{e} {e!r}" for e in chain)


async def test_missing_bucket_is_a_storage_error_that_names_it(s3: S3Server) -> None:
    storage = S3StorageBackend.from_url(s3.url("no-such-bucket"), credentials=CREDENTIALS)
    try:
        with pytest.raises(StorageError, match="no-such-bucket") as caught:
            await storage.put("key", stream(10))
        assert not isinstance(caught.value, StorageUnavailableError)  # retrying will not help
    finally:
        await storage.close()


async def _put_direct(server: S3Server, key: str, data: bytes) -> None:
    async with raw_client(server.endpoint) as client:
        await client.put_object(Bucket=BUCKET, Key=key, Body=data)


# -- prefixes and deletion ------------------------------------------------------------------------------


async def test_keys_live_under_the_url_prefix(s3: S3Server) -> None:
    await _put_direct(s3, "outside/x", b"not ours")
    storage = S3StorageBackend.from_url(s3.url(BUCKET + "/tenant-a"), credentials=CREDENTIALS)
    try:
        await storage.put("outside/x", stream(5))
        await storage.delete("outside/")

        assert await bucket_contents(s3.endpoint) == ["outside/x"]
        with pytest.raises(ObjectNotFoundError):
            await storage.stat("outside/x")
    finally:
        await storage.close()


async def test_prefix_delete_pages_through_every_listing(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "LIST_PAGE", 7)
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 3)
    storage = backend(s3)
    try:
        await asyncio.gather(*(storage.put(f"jobs/1/out-{i:02}", stream(1)) for i in range(20)))
        await storage.put("jobs/2/out", stream(1))

        await storage.delete("jobs/1/")

        assert await bucket_contents(s3.endpoint) == ["jobs/2/out"]
    finally:
        await storage.close()


# -- presigned URLs and credentials ---------------------------------------------------------------------


async def test_presigned_urls_read_and_write_the_object(s3: S3Server) -> None:
    storage = backend(s3)
    content = os.urandom(4096)
    try:
        put_url = await storage.presign_put("consumers/c/files/f", 300)
        async with httpx.AsyncClient() as http:
            assert (await http.put(put_url, content=content)).status_code == 200
            get_url = await storage.presign_get("consumers/c/files/f", 300)
            assert (await http.get(get_url)).content == content
        for url in (put_url, get_url):
            query = parse_qs(urlsplit(url).query)
            assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]  # v4 signatures
            assert query["X-Amz-Expires"] == ["300"]
            assert urlsplit(url).path == f"/{BUCKET}/consumers/c/files/f"  # path-style addressing
    finally:
        await storage.close()


async def test_a_presigned_put_for_an_announced_size_signs_its_length(s3: S3Server) -> None:
    # moto does not check presigned signatures (TESTING.md), so the refusal of another length is S3's
    # own; asserted here is that the length is one of the signed headers, which is what makes S3 refuse.
    storage = backend(s3)
    try:
        bound = await storage.presign_put("consumers/c/files/f", 300, size=4096)
        free = await storage.presign_put("consumers/c/files/g", 300)
        assert bound is not None and free is not None
        signed = parse_qs(urlsplit(bound).query)["X-Amz-SignedHeaders"][0].split(";")
        assert "content-length" in signed
        assert "content-length" not in parse_qs(urlsplit(free).query)["X-Amz-SignedHeaders"][0].split(";")
        async with httpx.AsyncClient() as http:
            assert (await http.put(bound, content=os.urandom(4096))).status_code == 200
    finally:
        await storage.close()


async def test_presigned_urls_outside_v4_limits_are_refused(s3: S3Server) -> None:
    storage = backend(s3)
    try:
        for ttl in (0, 7 * 24 * 3600 + 1):
            with pytest.raises(ValueError, match="7 days"):
                await storage.presign_get("k", ttl)
    finally:
        await storage.close()


async def test_presigned_urls_are_made_for_the_public_endpoint(s3: S3Server) -> None:
    storage = backend(s3, presign_endpoint="https://s3.example.org")
    try:
        url = await storage.presign_get("k", 60)
    finally:
        await storage.close()

    assert url.startswith(f"https://s3.example.org/{BUCKET}/k?")


async def test_standard_aws_environment_is_used_without_explicit_credentials(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "environment-secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    storage = S3StorageBackend.from_url(s3.url(), credentials=None)
    try:
        await storage.put("k", stream(3))
        url = await storage.presign_get("k", 60)
    finally:
        await storage.close()

    assert "from-the-environment" in parse_qs(urlsplit(url).query)["X-Amz-Credential"][0]


# -- error answers ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def answering(status: int, code: str) -> AsyncIterator[str]:
    """A loopback HTTP server that answers every request with an S3 error document."""
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>".encode()
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")  # answered before any body (botocore sends Expect: 100-continue)
        requests += 1
        writer.write(
            f"HTTP/1.1 {status} Error\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()
    assert requests > 0


@pytest.mark.parametrize(("status", "code"), [(503, "ServiceUnavailable"), (500, "InternalError")])
async def test_server_errors_are_unavailable(s3: S3Server, status: int, code: str) -> None:
    async with answering(status, code) as endpoint:
        storage = backend(s3, endpoint=endpoint, max_attempts=2)
        try:
            with pytest.raises(StorageUnavailableError, match=code):
                await storage.put("k", stream(10))
        finally:
            await storage.close()


async def test_refused_access_is_a_storage_error_not_unavailable(s3: S3Server) -> None:
    async with answering(403, "AccessDenied") as endpoint:
        storage = backend(s3, endpoint=endpoint, max_attempts=1)
        try:
            with pytest.raises(StorageError, match="refused access") as caught:
                await storage.put("k", stream(10))
        finally:
            await storage.close()

    assert not isinstance(caught.value, StorageUnavailableError)
