"""Storage through presigned URLs only: the side-car of a Kubernetes job holds no storage credentials.

The service mints, per job, a presigned GET URL for each input object and a presigned PUT URL for each
declared output, valid until the job's deadline, and puts them in the step's manifest (``urls``: key ->
URL). :class:`UrlStorage` then serves staging's ``get`` and ``put`` for exactly those keys over plain HTTP;
any other key is unknown to it. A PUT carries its exact ``Content-Length`` (S3 refuses a presigned PUT
without one), so callers give the size they are about to send (:func:`sidecar.staging.stage_out` measures
files and directory tars first). Errors map onto the storage errors staging already retries and reports:
a connection failure or a 5xx is :class:`StorageUnavailableError`, a 404 :class:`ObjectNotFoundError`, any
other refusal (an expired URL: 403) :class:`StorageError`. URLs never appear in a message: they are
credentials while they live.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping

import httpx

from backends.storage.base import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StorageUnavailableError,
)

TIMEOUT = httpx.Timeout(30.0, read=300.0, write=300.0)


class UrlStorage:
    """``get``/``put`` of the keys a manifest lists, through their presigned URLs (see the module)."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self._urls = dict(urls)
        self._http = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)

    def _url(self, key: str) -> str:
        try:
            return self._urls[key]
        except KeyError:
            raise StorageError(f"no URL was given for {key}") from None

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        if offset or length is not None:
            raise StorageError("ranged reads are not offered through presigned URLs")
        url = self._url(key)
        try:
            async with self._http.stream("GET", url) as response:
                _check(response, key)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as e:
            raise StorageUnavailableError(f"fetching {key} failed: {type(e).__name__}") from None

    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int | None = None,
        size: int | None = None,
    ) -> ObjectInfo:
        """Send exactly ``size`` bytes (required: the Content-Length of the PUT)."""
        if size is None:
            raise StorageError("a PUT through a presigned URL needs the size up front")
        if max_size is not None and size > max_size:
            raise ObjectTooLargeError(max_size)
        url = self._url(key)
        hasher = hashlib.sha256()
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            async for chunk in chunks:
                sent += len(chunk)
                if sent > size:
                    raise StorageError(f"{key}: more bytes than the {size} announced")
                hasher.update(chunk)
                yield chunk

        try:
            response = await self._http.put(url, content=body(), headers={"Content-Length": str(size)})
        except httpx.HTTPError as e:
            raise StorageUnavailableError(f"uploading {key} failed: {type(e).__name__}") from None
        _check(response, key)
        if sent != size:
            raise StorageError(f"{key}: {sent} bytes sent where {size} were announced")
        return ObjectInfo(key=key, size=sent, sha256=hasher.hexdigest())

    async def stat(self, key: str) -> ObjectInfo:
        raise StorageError("not offered through presigned URLs")

    async def delete(self, key_or_prefix: str) -> None:
        raise StorageError("not offered through presigned URLs")

    async def presign_get(self, key: str, ttl: int) -> str | None:
        return None

    async def presign_put(self, key: str, ttl: int, *, size: int | None = None) -> str | None:
        return None

    async def close(self) -> None:
        await self._http.aclose()


def _check(response: httpx.Response, key: str) -> None:
    if response.status_code < 300:
        return
    if response.status_code == 404:
        raise ObjectNotFoundError(key)
    if response.status_code >= 500:
        raise StorageUnavailableError(f"{key}: the storage answered {response.status_code}")
    raise StorageError(f"{key}: the storage refused the presigned request ({response.status_code})")
