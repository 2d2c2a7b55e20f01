"""What the file backend adds to the contract: its layout on disk, temp files, URLs, key conflicts."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.storage import file as file_module
from backends.storage.base import InvalidKeyError, ObjectNotFoundError, StorageError
from backends.storage.file import FileStorageBackend


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_objects_are_plain_files_under_the_root(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path)

    await storage.put("consumers/c1/files/f1", chunks(b"data"))

    assert (tmp_path / "consumers" / "c1" / "files" / "f1").read_bytes() == b"data"


async def test_temp_files_are_never_visible_as_objects(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".tmp-abc123").write_bytes(b"partial")

    with pytest.raises(InvalidKeyError):
        await storage.stat("a/.tmp-abc123")
    with pytest.raises(InvalidKeyError):
        await storage.put("a/.tmp-abc123", chunks(b"x"))


def test_stale_temp_files_are_swept_at_construction(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    stale, fresh, other = tmp_path / "a/b/.tmp-old", tmp_path / "a/.tmp-new", tmp_path / "a/keep"
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(other, (two_hours_ago, two_hours_ago))

    FileStorageBackend(tmp_path)

    assert not stale.exists()
    assert fresh.exists()  # may still be being written by another process
    assert other.exists()


async def test_presigned_urls_are_not_offered(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path)

    assert await storage.presign_get("a", 60) is None
    assert await storage.presign_put("a", 60) is None


async def test_a_prefix_is_not_an_object(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path)
    await storage.put("dir/file", chunks(b"x"))

    with pytest.raises(ObjectNotFoundError):
        await storage.stat("dir")
    with pytest.raises(ObjectNotFoundError):
        _ = [c async for c in storage.get("dir")]
    await storage.delete("dir")  # not a prefix delete without the "/": nothing happens

    assert (tmp_path / "dir" / "file").exists()


async def test_key_that_collides_with_a_prefix_is_a_storage_error(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path)
    await storage.put("a/b", chunks(b"x"))
    await storage.put("c", chunks(b"y"))

    with pytest.raises(StorageError, match="conflicts"):
        await storage.put("a", chunks(b"z"))
    with pytest.raises(StorageError, match="conflicts"):
        await storage.put("c/d", chunks(b"z"))

    leftovers = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert leftovers == ["a/b", "c"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///srv/wml/files", Path("/srv/wml/files")),
        ("file://localhost/srv/wml/files", Path("/srv/wml/files")),
        ("file:///srv/with%20space", Path("/srv/with space")),
    ],
)
def test_from_url_absolute(monkeypatch: pytest.MonkeyPatch, url: str, expected: Path) -> None:
    monkeypatch.setattr(FileStorageBackend, "__init__", _record_root)

    assert FileStorageBackend.from_url(url).root == expected


@pytest.mark.parametrize("url", ["file://data/files", "file:data/files"])
def test_from_url_relative_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)

    storage = FileStorageBackend.from_url(url)

    assert storage.root == tmp_path / "data" / "files"
    assert storage.root.is_dir()


@pytest.mark.parametrize("url", ["file://", "file:///x?y=1", "s3://bucket"])
def test_from_url_refuses_what_it_cannot_use(url: str) -> None:
    with pytest.raises(ValueError, match=r"file storage URL|not a file"):
        FileStorageBackend.from_url(url)


def _record_root(self: FileStorageBackend, root: Path) -> None:
    self.root = root


@pytest.mark.parametrize("step", ["get", "put"])
async def test_a_cancel_while_a_thread_opens_the_file_leaves_no_open_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    storage = FileStorageBackend(tmp_path)
    await storage.put("a/obj", chunks(b"data"))
    opener = "_open_for_read" if step == "get" else "_open_temp"
    real, release, opened = getattr(file_module, opener), threading.Event(), []

    def slow_open(*args: object) -> object:
        release.wait(10)  # still opening when the cancel comes
        made = real(*args)
        opened.append(made[0] if isinstance(made, tuple) else made)
        return made

    monkeypatch.setattr(file_module, opener, slow_open)

    async def use() -> None:
        if step == "get":
            async for _ in storage.get("a/obj"):
                pass
        else:
            await storage.put("a/new", chunks(b"more"))

    task = asyncio.create_task(use())
    await asyncio.sleep(0.05)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the thread finishes; what it made is taken back on the loop
        if opened and opened[0].closed:
            break
        await asyncio.sleep(0.01)

    assert [handle.closed for handle in opened] == [True]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["obj"]  # no temp file, no new object
