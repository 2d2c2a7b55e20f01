"""Stage-in: inputs fetched from real file storage, verified, placed, and archives extracted safely."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import stat
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from backends.storage.base import ObjectInfo, StorageBackend, StorageUnavailableError
from backends.storage.file import FileStorageBackend
from sidecar.archives import extract_archive
from sidecar.errors import InputStagingError
from sidecar.manifest import InputEntry, StageInManifest
from sidecar.staging import RetryPolicy, stage_in

FAST = RetryPolicy(attempts=3, base_delay=0.0)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def storage(tmp_path: Path) -> FileStorageBackend:
    return FileStorageBackend(tmp_path / "store")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "job" / "inputs"
    root.mkdir(parents=True)
    return root


async def upload(storage: StorageBackend, key: str, data: bytes, *, kind: str, path: str) -> InputEntry:
    info = await storage.put(key, chunks(data))
    assert info.sha256 is not None
    return InputEntry(slot=key, kind=kind, path=path, key=key, size=info.size, sha256=info.sha256)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as bundle:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                bundle.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                info.mode = 0o755 if member[0].endswith(".sh") else 0o644
                bundle.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


async def test_file_input_is_placed_verified_and_readable(storage: FileStorageBackend, inputs: Path) -> None:
    entry = await upload(storage, "f1", b"a,b\n1,2\n", kind="file", path="data/table.csv")

    await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    placed = inputs / "data" / "table.csv"
    assert placed.read_bytes() == b"a,b\n1,2\n"
    assert stat.S_IMODE(placed.stat().st_mode) == 0o644
    assert tree(inputs) == ["data", "data/table.csv"]  # no temp files left


async def test_zip_archive_is_extracted_into_the_slot_directory(
    storage: FileStorageBackend, inputs: Path
) -> None:
    data = zip_bytes({"top.txt": b"top", "nested/deeper/leaf.txt": b"leaf", "emptydir/": b""})
    entry = await upload(storage, "z", data, kind="archive", path="bundle")

    await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert (inputs / "bundle" / "top.txt").read_bytes() == b"top"
    assert (inputs / "bundle" / "nested" / "deeper" / "leaf.txt").read_bytes() == b"leaf"
    assert tree(inputs) == [
        "bundle",
        "bundle/emptydir",
        "bundle/nested",
        "bundle/nested/deeper",
        "bundle/nested/deeper/leaf.txt",
        "bundle/top.txt",
    ]


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
async def test_tar_archives_are_detected_by_content_and_extracted(
    storage: FileStorageBackend, inputs: Path, mode: str
) -> None:
    data = tar_bytes([("./run.sh", b"#!/bin/sh\n"), ("dir/file.txt", b"content")], mode=mode)
    entry = await upload(storage, "t", data, kind="archive", path="in/archive")

    await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    root = inputs / "in" / "archive"
    assert (root / "dir" / "file.txt").read_bytes() == b"content"
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) == 0o755  # the executable bit survives
    assert tree(root) == ["dir", "dir/file.txt", "run.sh"]


async def test_env_input_is_placed_as_is_after_it_parses(storage: FileStorageBackend, inputs: Path) -> None:
    data = b"# settings\nexport MODE=fast\nNAME='a b'\n"
    entry = await upload(storage, "e", data, kind="env", path="job.env")

    await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert (inputs / "job.env").read_bytes() == data


async def test_env_input_that_does_not_parse_is_refused(storage: FileStorageBackend, inputs: Path) -> None:
    entry = await upload(storage, "e", b"GOOD=1\nsecret-value-without-key\n", kind="env", path="job.env")

    with pytest.raises(InputStagingError, match="line 2") as caught:
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert "secret" not in str(caught.value)
    assert tree(inputs) == []


async def test_sha256_mismatch_is_refused_and_nothing_is_left(
    storage: FileStorageBackend, inputs: Path
) -> None:
    entry = await upload(storage, "f", b"payload", kind="file", path="f.bin")
    wrong = entry.model_copy(update={"sha256": hashlib.sha256(b"other").hexdigest()})

    with pytest.raises(InputStagingError, match="sha256"):
        await stage_in(storage, StageInManifest(inputs=[wrong]), inputs)

    assert tree(inputs) == []


@pytest.mark.parametrize("declared", [3, 100])
async def test_size_mismatch_is_refused(storage: FileStorageBackend, inputs: Path, declared: int) -> None:
    entry = await upload(storage, "f", b"payload", kind="file", path="f.bin")

    with pytest.raises(InputStagingError, match="bytes"):
        await stage_in(storage, StageInManifest(inputs=[entry.model_copy(update={"size": declared})]), inputs)

    assert tree(inputs) == []


async def test_missing_object_is_an_input_staging_error(storage: FileStorageBackend, inputs: Path) -> None:
    entry = InputEntry(slot="s", kind="file", path="f", key="gone", size=1, sha256="0" * 64)

    with pytest.raises(InputStagingError, match="object not found"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs, retry=FAST)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "", ".", "a/../../b", "a\\b"])
async def test_input_paths_must_stay_inside_the_inputs(
    storage: FileStorageBackend, inputs: Path, tmp_path: Path, path: str
) -> None:
    entry = await upload(storage, "f", b"x", kind="file", path="ok")

    with pytest.raises(InputStagingError, match="must stay inside"):
        await stage_in(storage, StageInManifest(inputs=[entry.model_copy(update={"path": path})]), inputs)

    assert not (tmp_path / "job" / "escape").exists()


async def test_input_path_through_a_symlink_is_refused(
    storage: FileStorageBackend, inputs: Path, tmp_path: Path
) -> None:
    (inputs / "link").symlink_to(tmp_path)
    entry = await upload(storage, "f", b"x", kind="file", path="link/planted")

    with pytest.raises(InputStagingError, match="must stay inside"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert not (tmp_path / "planted").exists()


async def test_input_under_an_existing_file_is_an_input_staging_error(
    storage: FileStorageBackend, inputs: Path
) -> None:
    (inputs / "taken").write_bytes(b"x")
    entry = await upload(storage, "f", b"x", kind="file", path="taken/f")

    with pytest.raises(InputStagingError, match="cannot create its directory"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)


def hostile_archives() -> list[tuple[str, bytes, str]]:
    fifo = special("pipe", tarfile.FIFOTYPE)
    device = special("disk", tarfile.BLKTYPE)
    zip_link = zipfile.ZipInfo("link")
    zip_link.external_attr = (stat.S_IFLNK | 0o777) << 16
    link_buffer = io.BytesIO()
    with zipfile.ZipFile(link_buffer, "w") as bundle:
        bundle.writestr("fine.txt", b"fine")
        bundle.writestr(zip_link, "/etc/passwd")
    return [
        ("zip-dotdot", zip_bytes({"fine.txt": b"ok", "../evil": b"evil"}), "'../evil'"),
        ("zip-absolute", zip_bytes({"/tmp/evil": b"evil"}), "absolute"),
        ("zip-symlink", link_buffer.getvalue(), "'link' is a symbolic link"),
        ("tar-absolute", tar_bytes([("ok.txt", b"ok"), ("/tmp/evil", b"evil")]), "'/tmp/evil'"),
        ("tar-dotdot", tar_bytes([("a/../../evil", b"evil")]), "'..'"),
        ("tar-symlink", tar_bytes([special("passwd", tarfile.SYMTYPE, "/etc/passwd")]), "symbolic link"),
        (
            "tar-hardlink",
            tar_bytes([("ok", b"x"), special("h", tarfile.LNKTYPE, "/etc/passwd")]),
            "hard link",
        ),
        ("tar-fifo", tar_bytes([fifo]), "'pipe' is a fifo"),
        ("tar-device", tar_bytes([device]), "'disk' is a device"),
        ("not-an-archive", b"just some bytes, not an archive at all" * 20, "not a zip or tar"),
        ("truncated-tgz", tar_bytes([("f", random.Random(0).randbytes(100_000))])[:3000], "corrupt"),
        ("truncated-zip", zip_bytes({"a.txt": b"a" * 1000})[:-30], "corrupt"),
    ]


@pytest.mark.parametrize(("name", "data", "message"), hostile_archives(), ids=lambda v: str(v)[:14])
async def test_hostile_archives_are_refused_and_leave_nothing(
    storage: FileStorageBackend, inputs: Path, tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    entry = await upload(storage, name, data, kind="archive", path="slot/archive")

    with pytest.raises(InputStagingError) as caught:
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert message in str(caught.value)
    assert tree(inputs) == ["slot"]  # nothing inside (no partial extraction, no temp files) ...
    assert not (tmp_path / "job" / "evil").exists()  # ... and nothing outside
    assert not Path("/tmp/evil").exists()


async def test_archive_over_an_explicit_extraction_limit_is_refused(
    storage: FileStorageBackend, inputs: Path
) -> None:
    data = tar_bytes([("a", b"\0" * 60_000), ("b", b"\0" * 60_000)])
    entry = await upload(storage, "bomb", data, kind="archive", path="slot")

    with pytest.raises(InputStagingError, match="'b' takes the extracted size over the limit of 100000"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs, max_extracted_size=100_000)

    assert tree(inputs) == []


@pytest.mark.slow
async def test_decompression_bomb_is_refused_by_the_default_limit(
    storage: FileStorageBackend, inputs: Path
) -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle,
        bundle.open("zeros", "w") as member,
    ):
        for _ in range(70):  # 70 MiB of zeros compresses to about 70 KiB
            member.write(b"\0" * (1024 * 1024))
    entry = await upload(storage, "bomb", buffer.getvalue(), kind="archive", path="slot")

    with pytest.raises(InputStagingError, match="over the limit"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert tree(inputs) == []


async def test_archive_into_an_occupied_directory_is_refused(
    storage: FileStorageBackend, inputs: Path
) -> None:
    (inputs / "slot").mkdir()
    (inputs / "slot" / "existing").write_bytes(b"x")
    entry = await upload(storage, "z", zip_bytes({"a": b"a"}), kind="archive", path="slot")

    with pytest.raises(InputStagingError, match="cannot place"):
        await stage_in(storage, StageInManifest(inputs=[entry]), inputs)

    assert tree(inputs) == ["slot", "slot/existing"]


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    archive.write_bytes(zip_bytes({f"f{i}": b"" for i in range(5)}))

    with pytest.raises(InputStagingError, match="more than 3 members"):
        extract_archive(archive, tmp_path / "out", max_extracted_size=1000, max_members=3)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.zip"]


class FlakyStorage:
    """Delegates to a real backend; the first ``failures`` reads or writes fail part-way through."""

    def __init__(self, inner: StorageBackend, failures: int) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def _should_fail(self) -> bool:
        self.calls += 1
        return self.calls <= self.failures

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        fail = self._should_fail()
        async for chunk in self.inner.get(key, offset=offset, length=length):
            yield chunk[: len(chunk) // 2] if fail else chunk
            if fail:
                raise StorageUnavailableError("connection reset")

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None) -> ObjectInfo:
        if self._should_fail():
            async for _ in chunks:
                break  # part of the stream is consumed, as by a connection that drops mid-upload
            raise StorageUnavailableError("connection reset")
        return await self.inner.put(key, chunks, max_size=max_size)

    def __getattr__(self, name: str) -> Callable[..., object]:
        return getattr(self.inner, name)  # type: ignore[no-any-return]


async def test_transient_storage_errors_are_retried(storage: FileStorageBackend, inputs: Path) -> None:
    entry = await upload(storage, "f", b"retried payload", kind="file", path="f")
    flaky = FlakyStorage(storage, failures=2)

    await stage_in(flaky, StageInManifest(inputs=[entry]), inputs, retry=FAST)  # type: ignore[arg-type]

    assert flaky.calls == 3
    assert (inputs / "f").read_bytes() == b"retried payload"
    assert tree(inputs) == ["f"]


async def test_persistent_storage_errors_give_up(storage: FileStorageBackend, inputs: Path) -> None:
    entry = await upload(storage, "f", b"payload", kind="file", path="f")
    flaky = FlakyStorage(storage, failures=10)

    with pytest.raises(InputStagingError, match="connection reset"):
        await stage_in(flaky, StageInManifest(inputs=[entry]), inputs, retry=FAST)  # type: ignore[arg-type]

    assert flaky.calls == 3
    assert tree(inputs) == []


async def test_a_cancel_while_the_temp_file_is_created_leaves_no_descriptor_and_no_file(
    storage: FileStorageBackend, inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = await upload(storage, "in/data", b"bytes", kind="file", path="data.txt")
    real_mkstemp, release, made = tempfile.mkstemp, threading.Event(), []

    def slow_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        release.wait(10)  # still creating it when the cancel comes
        made.append(real_mkstemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkstemp", slow_mkstemp)
    task = asyncio.create_task(stage_in(storage, StageInManifest(inputs=[entry]), inputs, retry=FAST))
    await asyncio.sleep(0.05)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):  # the thread finishes; what it made is taken back on the loop
        if made and not Path(made[0][1]).exists():
            break
        await asyncio.sleep(0.01)

    [(fd, name)] = made
    assert not Path(name).exists()
    descriptor = Path(f"/proc/self/fd/{fd}")  # its number may have been reused since: compare the target
    assert not (descriptor.exists() and os.readlink(descriptor).startswith(name))  # closed, not leaked
    assert tree(inputs) == []
