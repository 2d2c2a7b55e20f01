"""S3 on loopback for tests: moto's real S3 server, a fresh bucket per test, and a link that can be cut.

moto's ``ThreadedMotoServer`` starts once per session (``moto_server``); ``s3`` resets its state
(``POST /moto-api/reset``) and creates the test bucket before each test that asks for it. ``S3Link`` is a
TCP relay between a client and that server which a test can cut (the listener closes and every open
connection is torn down, as when the server dies) and restore on the same port: the "server goes away
mid-transfer" tests use it, because moto's server keeps serving connections that are already open when it
is stopped, and loses its state when it runs in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import botocore.session
import httpx
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from moto.server import ThreadedMotoServer

from backends.storage.base import StorageCredentials

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

BUCKET = "wml-test"
REGION = "us-east-1"
CREDENTIALS = StorageCredentials("wml-test-key", "wml-test-secret")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    admin: Any = field(repr=False)  # a synchronous botocore client of the server

    def url(self, bucket: str = BUCKET, *, endpoint: str | None = None, **params: Any) -> str:
        """The storage URL (``WML_STORAGE``) of ``bucket`` on this server, with extra parameters."""
        query = {"endpoint": endpoint or self.endpoint, "region": REGION, **params}
        return f"s3://{bucket}?{urlencode(query)}"

    def settings(self, bucket: str = BUCKET, **params: Any) -> dict[str, Any]:
        """Settings overrides that put a service on this server."""
        return {
            "storage": self.url(bucket, **params),
            "s3_access_key_id": CREDENTIALS.access_key_id,
            "s3_secret_access_key": CREDENTIALS.secret_access_key,
        }


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # Synchronous botocore, so async fixtures can ask for ``s3`` through getfixturevalue.
    admin = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS.access_key_id,
        aws_secret_access_key=CREDENTIALS.secret_access_key,
    )
    try:
        yield S3Server(endpoint, admin)
    finally:
        admin.close()
        server.stop()


@pytest.fixture
def s3(moto_server: S3Server) -> S3Server:
    """The session's moto server, emptied, with the test bucket created."""
    httpx.post(f"{moto_server.endpoint}/moto-api/reset").raise_for_status()
    moto_server.admin.create_bucket(Bucket=BUCKET)
    return moto_server


@functools.cache
def _session() -> AioSession:
    return get_session()


@asynccontextmanager
async def raw_client(endpoint: str) -> AsyncIterator[S3Client]:
    """A plain aiobotocore client, to look at what the backend under test left in the bucket."""
    config = AioConfig(signature_version="s3v4", s3={"addressing_style": "path"}, region_name=REGION)
    async with _session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=config,
        aws_access_key_id=CREDENTIALS.access_key_id,
        aws_secret_access_key=CREDENTIALS.secret_access_key,
    ) as client:
        yield client


async def bucket_contents(endpoint: str, bucket: str = BUCKET) -> list[str]:
    """Every object key, and ``multipart:<key>`` for every unfinished multipart upload."""
    async with raw_client(endpoint) as client:
        objects = await client.list_objects_v2(Bucket=bucket)
        uploads = await client.list_multipart_uploads(Bucket=bucket)
    keys = [item["Key"] for item in objects.get("Contents", [])]
    keys += [f"multipart:{item['Key']}" for item in uploads.get("Uploads", [])]
    return sorted(keys)


class S3Link:
    """A TCP relay from a loopback port to an S3 server; ``cut()`` makes the server vanish, ``restore()``
    brings it back on the same port. ``cut_after(n)`` cuts once ``n`` bytes went towards the server."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._budget: int | None = None
        self.port = 0
        self.forwarded = 0  # bytes relayed towards the server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut_after(self, count: int) -> None:
        self._budget = self.forwarded + count

    def cut(self) -> None:
        """Stop listening (new connections are refused) and tear down every open connection."""
        self._budget = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, server_writer))
        pumps = [
            asyncio.create_task(self._pump(client_reader, server_writer, upstream=True)),
            asyncio.create_task(self._pump(server_reader, client_writer, upstream=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(64 * 1024):
                if upstream:
                    self.forwarded += len(data)
                    if self._budget is not None and self.forwarded >= self._budget:
                        self.cut()
                        return
                writer.write(data)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def s3_link(server: S3Server) -> AsyncIterator[S3Link]:
    link = S3Link(server.endpoint)
    await link.start()
    try:
        yield link
    finally:
        await link.close()
