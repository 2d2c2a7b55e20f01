"""Stage-out: outputs streamed to real file storage, directories as tars, the manifest written last."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from backends.storage.base import ObjectInfo, ObjectNotFoundError, StorageBackend, StorageError
from backends.storage.base import StorageUnavailableError as Unavailable
from backends.storage.file import FileStorageBackend
from sidecar.archives import tar_directory_stream
from sidecar.errors import OutputUploadError
from sidecar.manifest import OutputEntry, OutputManifest, StageOutManifest
from sidecar.staging import RetryPolicy, stage_out

FAST = RetryPolicy(attempts=3, base_delay=0.0)


@pytest.fixture
def storage(tmp_path: Path) -> FileStorageBackend:
    return FileStorageBackend(tmp_path / "store")


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "job" / "outputs"
    root.mkdir(parents=True)
    return root


def manifest(tmp_path: Path, *outputs: tuple[str, str], log: bool = False) -> StageOutManifest:
    return StageOutManifest(
        outputs=[OutputEntry(name=name, path=path, key=f"out/{name}") for name, path in outputs],
        log_path=str(tmp_path / "job" / "worker.log") if log else None,
        log_key="out/log" if log else None,
        result_path=str(tmp_path / "job" / "result.json"),
    )


async def read(storage: StorageBackend, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.get(key)])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_files_directories_missing_outputs_and_the_log(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "result.txt").write_bytes(b"the answer is 42")
    (outputs / "plots" / "deep").mkdir(parents=True)
    (outputs / "plots" / "a.png").write_bytes(b"png-a")
    (outputs / "plots" / "deep" / "b.png").write_bytes(b"png-b")
    (outputs / "plots" / "link").symlink_to("/etc/passwd")
    (tmp_path / "job" / "worker.log").write_bytes(b"line 1\nline 2\n")
    spec = manifest(tmp_path, ("result", "result.txt"), ("plots", "plots"), ("absent", "nope.txt"), log=True)

    result = await stage_out(storage, spec, outputs)

    result_file = OutputManifest.model_validate_json(Path(spec.result_path).read_text())
    assert result_file == result
    assert result.missing == ["absent"]
    by_name = {o.name: o for o in result.outputs}
    assert sorted(by_name) == ["plots", "result"]
    assert await read(storage, "out/result") == b"the answer is 42"
    assert (by_name["result"].size, by_name["result"].sha256) == (16, sha(b"the answer is 42"))
    tar_data = await read(storage, "out/plots")
    assert (by_name["plots"].size, by_name["plots"].sha256) == (len(tar_data), sha(tar_data))
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        assert sorted(tar.getnames()) == ["a.png", "deep", "deep/b.png"]  # the symlink left out
        member = tar.extractfile("deep/b.png")
        assert member is not None
        assert member.read() == b"png-b"
    assert result.log is not None
    assert (result.log.name, result.log.key, result.log.size) == ("log", "out/log", 14)
    assert await read(storage, "out/log") == b"line 1\nline 2\n"


async def test_manifest_json_has_the_documented_shape(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "r").write_bytes(b"r")

    await stage_out(storage, manifest(tmp_path, ("r", "r")), outputs)

    document = json.loads((tmp_path / "job" / "result.json").read_text())
    assert document == {
        "outputs": [{"name": "r", "key": "out/r", "size": 1, "sha256": sha(b"r")}],
        "missing": [],
        "log": None,
    }


async def test_missing_log_is_not_an_error(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    result = await stage_out(storage, manifest(tmp_path, log=True), outputs)

    assert result.log is None
    with pytest.raises(ObjectNotFoundError):
        await storage.stat("out/log")


async def test_symlinked_outputs_are_refused_as_missing(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token").write_bytes(b"sidecar credentials")
    (outputs / "leak").symlink_to(secret / "token")
    (outputs / "dir").symlink_to(secret)
    os.mkfifo(outputs / "fifo")
    spec = manifest(tmp_path, ("leak", "leak"), ("through", "dir/token"), ("dir", "dir"), ("fifo", "fifo"))

    result = await stage_out(storage, spec, outputs)

    assert result.outputs == []
    assert result.missing == ["leak", "through", "dir", "fifo"]
    assert not (tmp_path / "store" / "out").exists()


@pytest.mark.parametrize("path", ["../secret", "/etc/passwd", ""])
async def test_output_paths_must_stay_inside_the_outputs(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path, path: str
) -> None:
    spec = manifest(tmp_path, ("bad", path))

    with pytest.raises(OutputUploadError, match="must stay inside"):
        await stage_out(storage, spec, outputs)

    assert not (tmp_path / "job" / "result.json").exists()


class WatchingStorage:
    """Delegates to a real backend; fails the first ``failures`` puts part-way and records what it saw."""

    def __init__(
        self, inner: StorageBackend, result_path: Path, failures: int = 0, error: type = Unavailable
    ):
        self.inner, self.result_path, self.failures, self.error = inner, result_path, failures, error
        self.puts = 0
        self.manifest_seen_during_upload = False

    async def put(self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None) -> ObjectInfo:
        self.puts += 1
        self.manifest_seen_during_upload |= self.result_path.exists()
        if self.puts <= self.failures:
            async for _ in chunks:
                break
            raise self.error("service unavailable")
        return await self.inner.put(key, chunks, max_size=max_size)

    def __getattr__(self, name: str) -> Callable[..., object]:
        return getattr(self.inner, name)  # type: ignore[no-any-return]


async def test_manifest_is_written_only_after_every_upload(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "a").write_bytes(b"a")
    (outputs / "b").mkdir()
    (tmp_path / "job" / "worker.log").write_bytes(b"log")
    spec = manifest(tmp_path, ("a", "a"), ("b", "b"), log=True)
    Path(spec.result_path).write_text("stale manifest of an earlier attempt")
    watching = WatchingStorage(storage, Path(spec.result_path))

    await stage_out(watching, spec, outputs)  # type: ignore[arg-type]

    assert watching.puts == 3
    assert not watching.manifest_seen_during_upload
    assert OutputManifest.model_validate_json(Path(spec.result_path).read_text()).log is not None
    assert [p.name for p in (tmp_path / "job").iterdir() if p.name.startswith(".")] == []


async def test_transient_errors_are_retried_with_a_fresh_stream(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024)
    (outputs / "big.bin").write_bytes(data)
    (outputs / "tree").mkdir()
    (outputs / "tree" / "x").write_bytes(data[:1000])
    spec = manifest(tmp_path, ("big", "big.bin"), ("tree", "tree"))
    watching = WatchingStorage(storage, Path(spec.result_path), failures=2)

    result = await stage_out(watching, spec, outputs, retry=FAST)  # type: ignore[arg-type]

    assert watching.puts == 4  # two failures, then both outputs
    assert await read(storage, "out/big") == data
    assert result.outputs[0].sha256 == sha(data)
    assert result.outputs[0].size == len(data)


async def test_upload_failing_after_retries_is_an_output_upload_error(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "a").write_bytes(b"a")
    spec = manifest(tmp_path, ("a", "a"))
    watching = WatchingStorage(storage, Path(spec.result_path), failures=100)

    with pytest.raises(OutputUploadError, match="output 'a': upload failed: service unavailable"):
        await stage_out(watching, spec, outputs, retry=FAST)  # type: ignore[arg-type]

    assert watching.puts == 3
    assert not Path(spec.result_path).exists()


async def test_permanent_storage_errors_are_not_retried(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "a").write_bytes(b"a")
    spec = manifest(tmp_path, ("a", "a"))
    watching = WatchingStorage(storage, Path(spec.result_path), failures=100, error=StorageError)

    with pytest.raises(OutputUploadError):
        await stage_out(watching, spec, outputs, retry=FAST)  # type: ignore[arg-type]

    assert watching.puts == 1


def test_retry_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.5, max_delay=3.0)

    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_abandoning_a_directory_tar_stops_its_writer(tmp_path: Path) -> None:
    for index in range(40):
        (tmp_path / f"file{index:02}").write_bytes(os.urandom(256 * 1024))
    stream = tar_directory_stream(tmp_path)

    first = await anext(stream)
    await asyncio.wait_for(stream.aclose(), timeout=10)  # the writer thread must not stay blocked

    assert first


async def test_the_whole_outputs_directory_may_be_one_output(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "a").write_bytes(b"a")
    (outputs / "sub").mkdir()
    (outputs / "sub" / "b").write_bytes(b"b")

    await stage_out(storage, manifest(tmp_path, ("all", ".")), outputs)

    with tarfile.open(fileobj=io.BytesIO(await read(storage, "out/all"))) as tar:
        assert sorted(tar.getnames()) == ["a", "sub", "sub/b"]


async def test_empty_directory_is_an_empty_tar(
    storage: FileStorageBackend, outputs: Path, tmp_path: Path
) -> None:
    (outputs / "empty").mkdir()

    result = await stage_out(storage, manifest(tmp_path, ("empty", "empty")), outputs)

    with tarfile.open(fileobj=io.BytesIO(await read(storage, "out/empty"))) as tar:
        assert tar.getnames() == []
    assert result.outputs[0].name == "empty"
