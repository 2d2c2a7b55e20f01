"""Storage backends under test: every backend in STORAGE_BACKENDS runs the whole contract suite.

``file`` runs on a temporary directory, ``s3`` on moto's S3 server on loopback (a fresh bucket per test).
To add a backend, add its name to the list and a branch to ``storage_harness`` that builds it and lists
its raw leftovers (objects, unfinished multipart uploads, temp files).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.storage.base import StorageBackend
from backends.storage.file import FileStorageBackend
from backends.storage.s3.backend import S3StorageBackend
from tests.support.s3 import CREDENTIALS, S3Server, bucket_contents

STORAGE_BACKENDS = ["file", "s3"]


@dataclass
class StorageHarness:
    backend: StorageBackend
    raw_listing: Callable[[], Awaitable[list[str]]]  # everything the backend holds, temp files included


@pytest.fixture(params=STORAGE_BACKENDS)
async def storage_harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageHarness]:
    if request.param == "file":
        root = tmp_path / "store"
        backend: StorageBackend = FileStorageBackend(root)

        async def raw_listing() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())

    elif request.param == "s3":
        server: S3Server = request.getfixturevalue("s3")
        backend = S3StorageBackend.from_url(server.url(), credentials=CREDENTIALS)

        async def raw_listing() -> list[str]:
            return await bucket_contents(server.endpoint)

    else:  # pragma: no cover - a new backend needs its branch here
        raise AssertionError(f"no harness for storage backend {request.param!r}")
    try:
        yield StorageHarness(backend, raw_listing)
    finally:
        await backend.close()


@pytest.fixture
def storage(storage_harness: StorageHarness) -> StorageBackend:
    return storage_harness.backend
