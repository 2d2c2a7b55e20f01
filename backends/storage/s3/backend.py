"""Storage in an S3 bucket (AWS S3, MinIO, or any S3-compatible server) through aiobotocore.

Selected by ``s3://bucket[/prefix]?endpoint=http://minio:9000&region=us-east-1`` (see
:mod:`backends.storage.s3.url` for every parameter). One client is created on first use and closed by
:meth:`S3StorageBackend.close`; it always uses path-style addressing, an explicit region and v4 signatures,
so MinIO and other S3 servers behind plain host names work. Credentials come from the settings (passed in
as :class:`StorageCredentials`) or, when none are given, from botocore's standard chain (``AWS_*``
variables, shared config files, instance and pod roles); they never appear in a log line or an error.

Writes stream: bytes are cut into parts of ``part_size`` as they arrive and uploaded with at most
``concurrency`` parts in flight, so memory stays bounded by about ``(concurrency + 2) * part_size`` whatever
the object size; an object smaller than one part goes up in a single PUT. sha256 and the size limit are
computed and enforced while streaming. A multipart upload is aborted on *any* failure (the source raising,
the limit, cancellation, the server failing), so nothing partial remains: S3 shows an object only when it
is complete. When the abort itself cannot reach the server, the upload is remembered and aborted at the
next write or at close; a bucket lifecycle rule (``AbortIncompleteMultipartUpload``) is the backstop for a
process that dies.

botocore's failures become the storage errors of :mod:`backends.storage.base`: connection errors, timeouts
and 5xx answers (after botocore's own retries) are :class:`StorageUnavailableError`, which callers may retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from backends.storage.base import (
    InvalidRangeError,
    ObjectInfo,
    ObjectNotFoundError,
    StorageCredentials,
    StorageError,
    StorageUnavailableError,
)
from backends.storage.file import validate_key
from backends.storage.s3.parts import PartReader, upload_parts
from backends.storage.s3.url import S3Location, parse_s3_url

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

CHUNK_SIZE = 1024 * 1024  # bytes per read handed to the caller of get()
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes
LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)
POOL_SIZE = 64  # connections to S3; waiting for one has no timeout, only the connect itself does

log = structlog.get_logger("wml.storage.s3")

_UNAVAILABLE = (
    BotoConnectionError,
    HTTPClientError,
    IncompleteReadError,
    aiohttp.ClientError,
    TimeoutError,
    OSError,
)
_RETRYABLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"})
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"})


@functools.cache
def _session() -> AioSession:
    """One botocore session per process: it loads the S3 service model once, not per client."""
    return get_session()


class S3StorageBackend:
    """Objects in ``bucket`` under an optional key prefix; see the module docstring."""

    def __init__(self, location: S3Location, *, credentials: StorageCredentials | None = None) -> None:
        self.location = location
        self._credentials = credentials
        self._stack = AsyncExitStack()
        self._lock = asyncio.Lock()
        self._s3: S3Client | None = None
        self._presigner: S3Client | None = None
        self._orphans: set[tuple[str, str]] = set()  # (object key, upload id) whose abort failed

    @classmethod
    def from_url(cls, url: str, *, credentials: StorageCredentials | None = None) -> Self:
        """``s3://bucket[/prefix]?endpoint=...&region=...``; raises ValueError naming what is wrong."""
        return cls(parse_s3_url(url), credentials=credentials)

    @property
    def bucket(self) -> str:
        return self.location.bucket

    # -- the client ---------------------------------------------------------------------------------

    async def _client(self) -> S3Client:
        if self._s3 is None:
            async with self._lock:
                if self._s3 is None:
                    self._s3 = await self._create_client(self.location.endpoint)
        return self._s3

    async def _presign_client(self) -> S3Client:
        """Presigned URLs are signed for the host consumers use, which may differ from ours."""
        if self.location.presign_endpoint is None:
            return await self._client()
        if self._presigner is None:
            async with self._lock:
                if self._presigner is None:
                    self._presigner = await self._create_client(self.location.presign_endpoint)
        return self._presigner

    async def _create_client(self, endpoint: str | None) -> S3Client:
        config = AioConfig(
            region_name=self.location.region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": self.location.max_attempts, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            max_pool_connections=POOL_SIZE,  # shared by every transfer of the process
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        keys: dict[str, Any] = {}
        if self._credentials is not None:
            keys = {
                "aws_access_key_id": self._credentials.access_key_id,
                "aws_secret_access_key": self._credentials.secret_access_key,
            }
        creator = _session().create_client(
            "s3", endpoint_url=endpoint, region_name=self.location.region, config=config, **keys
        )
        client: S3Client = await self._stack.enter_async_context(creator)
        return client

    async def close(self) -> None:
        if self._orphans and self._s3 is not None:
            await self._abort_orphans(self._s3)
        if self._orphans:
            log.warning("s3_multipart_uploads_left", count=len(self._orphans), bucket=self.bucket)
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        self._s3 = self._presigner = None

    # -- keys and errors ------------------------------------------------------------------------------

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return self.location.prefix + key

    @contextlib.contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        """Turn botocore's and aiohttp's failures into storage errors (no credentials, no URLs)."""
        try:
            yield
        except ClientError as e:
            raise self._client_error(e, key) from e
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise StorageError(
                "no usable S3 credentials: configure them in the settings or the standard AWS environment"
            ) from e
        except _UNAVAILABLE as e:
            raise StorageUnavailableError(
                f"S3 at {self.location.describe()} is unavailable ({type(e).__name__}) while handling {key!r}"
            ) from e
        except BotoCoreError as e:
            raise StorageError(f"S3 client failure ({type(e).__name__}) while handling {key!r}") from e

    def _client_error(self, e: ClientError, key: str) -> StorageError:
        error: dict[str, Any] = dict(e.response.get("Error", {}))
        code = str(error.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(key)
        if code == "InvalidRange" or status == 416:
            return InvalidRangeError(f"range not satisfiable for {key!r}")
        if code == "NoSuchBucket":
            return StorageError(f"the S3 bucket {self.bucket!r} does not exist")
        if status >= 500 or code in _RETRYABLE_CODES:
            return StorageUnavailableError(f"S3 answered {status} {code} while handling {key!r}")
        if code in _DENIED_CODES:
            return StorageError(f"S3 refused access to bucket {self.bucket!r} ({code})")
        return StorageError(f"S3 answered {status} {code} while handling {key!r}")

    # -- writes -------------------------------------------------------------------------------------

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None) -> ObjectInfo:
        object_key = self._object_key(key)
        client = await self._client()
        if self._orphans:
            await self._abort_orphans(client)
        reader = PartReader(chunks, self.location.part_size, max_size)
        first = await reader.next_part()
        if reader.exhausted:  # the whole object fits in one part: one PUT, nothing to abort
            with self._translated(key):
                await client.put_object(Bucket=self.bucket, Key=object_key, Body=first or b"")
        else:
            await self._put_multipart(client, key, object_key, first or b"", reader)
        return ObjectInfo(key=key, size=reader.size, sha256=reader.sha256())

    async def _put_multipart(
        self, client: S3Client, key: str, object_key: str, first: bytes, reader: PartReader
    ) -> None:
        with self._translated(key):
            created = await client.create_multipart_upload(Bucket=self.bucket, Key=object_key)
        upload_id = created["UploadId"]
        try:

            async def send(number: int, body: bytes) -> str:
                with self._translated(key):
                    part = await client.upload_part(
                        Bucket=self.bucket, Key=object_key, UploadId=upload_id, PartNumber=number, Body=body
                    )
                return part["ETag"]

            etags = await upload_parts(first, reader, send, self.location.concurrency)
            with self._translated(key):
                await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
                )
        except BaseException:
            await self._abort(client, object_key, upload_id)
            raise

    async def _abort(self, client: S3Client, object_key: str, upload_id: str) -> None:
        """Abort a multipart upload; when the server cannot be reached, remember it for later."""
        upload = (object_key, upload_id)
        try:
            await client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchUpload":  # already gone
                self._orphans.discard(upload)
                return
            self._orphans.add(upload)
        except (TimeoutError, BotoCoreError, aiohttp.ClientError):
            self._orphans.add(upload)
        except asyncio.CancelledError:
            self._orphans.add(upload)
            raise
        else:
            self._orphans.discard(upload)
            return
        log.warning("s3_multipart_abort_deferred", bucket=self.bucket, key=object_key)

    async def _abort_orphans(self, client: S3Client) -> None:
        for object_key, upload_id in sorted(self._orphans):
            await self._abort(client, object_key, upload_id)

    # -- reads --------------------------------------------------------------------------------------

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        object_key = self._object_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise InvalidRangeError(f"invalid range: offset={offset} length={length}")
        if length == 0:  # S3 refuses empty ranges; answer them here
            size = (await self.stat(key)).size
            if offset > size:
                raise InvalidRangeError(f"offset {offset} is past the end ({size} bytes)")
            return
        client = await self._client()
        try:
            with self._translated(key):
                if offset == 0 and length is None:  # S3 refuses "bytes=0-" on an empty object
                    response = await client.get_object(Bucket=self.bucket, Key=object_key)
                else:
                    span = f"bytes={offset}-{'' if length is None else offset + length - 1}"
                    response = await client.get_object(Bucket=self.bucket, Key=object_key, Range=span)
        except InvalidRangeError:
            size = (await self.stat(key)).size
            if offset == size:  # reading from the very end: nothing, not an error
                return
            raise InvalidRangeError(f"offset {offset} is past the end ({size} bytes)") from None
        body = response["Body"]
        try:
            while True:
                with self._translated(key):
                    chunk = await body.read(CHUNK_SIZE)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def stat(self, key: str) -> ObjectInfo:
        object_key = self._object_key(key)
        client = await self._client()
        with self._translated(key):
            head = await client.head_object(Bucket=self.bucket, Key=object_key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]), sha256=None)

    # -- deletion -----------------------------------------------------------------------------------

    async def delete(self, key_or_prefix: str) -> None:
        client = await self._client()
        if not key_or_prefix.endswith("/"):
            object_key = self._object_key(key_or_prefix)
            with self._translated(key_or_prefix):
                await client.delete_object(Bucket=self.bucket, Key=object_key)
            return
        prefix = self._object_key(key_or_prefix[:-1]) + "/"
        with self._translated(key_or_prefix):
            async for keys in self._listed(client, prefix):
                for start in range(0, len(keys), DELETE_BATCH):
                    await self._delete_batch(client, keys[start : start + DELETE_BATCH], key_or_prefix)

    async def _listed(self, client: S3Client, prefix: str) -> AsyncIterator[list[str]]:
        paginator = client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE}
        )
        async for page in pages:
            keys = [item["Key"] for item in page.get("Contents", []) if "Key" in item]
            if keys:
                yield keys

    async def _delete_batch(self, client: S3Client, keys: list[str], prefix: str) -> None:
        answer = await client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if failed:
            codes = sorted({str(e.get("Code")) for e in failed})
            raise StorageError(f"S3 kept {len(failed)} objects under {prefix!r} ({', '.join(codes)})")

    # -- presigned URLs -----------------------------------------------------------------------------

    async def presign_get(self, key: str, ttl: int) -> str | None:
        return await self._presign("get_object", key, ttl)

    async def presign_put(self, key: str, ttl: int, *, size: int | None = None) -> str | None:
        """With ``size``, Content-Length is a signed header: S3 refuses a PUT of any other length."""
        return await self._presign("put_object", key, ttl, {} if size is None else {"ContentLength": size})

    async def _presign(self, operation: str, key: str, ttl: int, extra: dict[str, int] | None = None) -> str:
        object_key = self._object_key(key)
        if not 1 <= ttl <= 7 * 24 * 3600:  # the limits of a v4 signature
            raise ValueError(f"a presigned URL lives between 1 second and 7 days, not {ttl} seconds")
        client = await self._presign_client()
        with self._translated(key):
            url: str = await client.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": object_key, **(extra or {})}, ExpiresIn=ttl
            )
        return url
