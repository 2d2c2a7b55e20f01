"""The side-car's storage through presigned URLs (sidecar/urlstorage.py), against moto's real S3 server:
only the keys given, the exact length on a PUT, storage errors that staging knows how to retry or report,
and no URL (a credential while it lives) in any message."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest

from backends.storage.base import ObjectNotFoundError, StorageError, StorageUnavailableError
from backends.storage.s3.backend import S3StorageBackend
from sidecar.main import UsageError, storage_for
from sidecar.manifest import StageInManifest
from sidecar.urlstorage import UrlStorage
from tests.support.s3 import CREDENTIALS, S3Server


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_put_then_get_through_the_urls_of_the_given_keys(s3: S3Server) -> None:
    s3_storage = S3StorageBackend.from_url(s3.url(), credentials=CREDENTIALS)
    put_url = await s3_storage.presign_put("k/out", 60)
    get_url = await s3_storage.presign_get("k/out", 60)
    assert put_url is not None and get_url is not None
    urls = UrlStorage({"k/out": put_url})
    try:
        info = await urls.put("k/out", _chunks(b"abc", b"def"), size=6)
        assert (info.size, info.sha256) == (
            6,
            "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721",
        )
        with pytest.raises(StorageError, match="needs the size"):
            await urls.put("k/out", _chunks(b"x"))
        with pytest.raises(StorageError, match="no URL was given for k/other"):
            await urls.put("k/other", _chunks(b"x"), size=1)
        with pytest.raises(StorageError, match="more bytes than the 2 announced"):
            await urls.put("k/out", _chunks(b"abc"), size=2)
    finally:
        await urls.close()
    reader = UrlStorage({"k/out": get_url, "k/none": get_url.replace("k/out", "k/none")})
    try:
        assert b"".join([c async for c in reader.get("k/out")]) == b"abcdef"
        with pytest.raises(ObjectNotFoundError):
            [c async for c in reader.get("k/none")]
    finally:
        await reader.close()
        await s3_storage.close()


async def test_an_unreachable_storage_is_unavailable_and_no_message_shows_a_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    secret_url = f"http://127.0.0.1:{port}/bucket/k?X-Amz-Signature=very-secret"
    urls = UrlStorage({"k": secret_url})
    try:
        with pytest.raises(StorageUnavailableError) as raised:
            [c async for c in urls.get("k")]
        assert "very-secret" not in str(raised.value)
        with pytest.raises(StorageUnavailableError) as raised:
            await urls.put("k", _chunks(b"x"), size=1)
        assert "very-secret" not in str(raised.value)
    finally:
        await urls.close()


def test_a_manifest_with_urls_needs_no_storage_settings_and_one_without_needs_them() -> None:
    assert isinstance(storage_for(StageInManifest(urls={}), None), UrlStorage)
    with pytest.raises(UsageError, match="WML_STORAGE is not set"):
        storage_for(StageInManifest(), None)
