"""Storage backends under test: every backend in STORAGE_BACKENDS runs the whole contract suite.

To add one (S3 against a MinIO started by a fixture), add its name to the list and a branch to
``storage_harness`` that builds it and lists its raw leftovers (objects, parts, temp files).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.storage.base import StorageBackend
from backends.storage.file import FileStorageBackend

STORAGE_BACKENDS = ["file"]


@dataclass
class StorageHarness:
    backend: StorageBackend
    raw_listing: Callable[[], Awaitable[list[str]]]  # everything the backend holds, temp files included


@pytest.fixture(params=STORAGE_BACKENDS)
async def storage_harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageHarness]:
    if request.param == "file":
        root = tmp_path / "store"
        backend = FileStorageBackend(root)

        async def raw_listing() -> list[str]:
            return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())

        harness = StorageHarness(backend, raw_listing)
    else:  # pragma: no cover - a new backend needs its branch here
        raise AssertionError(f"no harness for storage backend {request.param!r}")
    try:
        yield harness
    finally:
        await harness.backend.close()


@pytest.fixture
def storage(storage_harness: StorageHarness) -> StorageBackend:
    return storage_harness.backend
