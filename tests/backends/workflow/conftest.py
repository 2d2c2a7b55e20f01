"""Fixtures for the workflow-backend contract suite: each backend, on a file storage in tmp_path.

Every fixture here is backend-neutral except where a backend has to say something only it knows
(``process_group``: the local backend's process group of a run, for checking that nothing is left;
``backend_traits``: what a backend's design decides differently, each case named there).
The ``kubernetes`` backend runs against a fake API server on loopback whose fake kubelet really runs
the Pods (tests/support/kube_*.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import io
import os
import signal
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import (
    BackendUpdate,
    InputKind,
    JobRun,
    Resources,
    RunPhase,
    StagedInput,
    StagedOutput,
    WorkflowBackend,
)
from backends.workflow.host.container.backend import ContainerWorkflowBackend
from backends.workflow.host.container.cli import Engine
from backends.workflow.host.container.config import ContainerOptions
from backends.workflow.host.container.sidecar import SidecarStorage
from backends.workflow.host.local.backend import LocalWorkflowBackend
from backends.workflow.host.local.sandbox import SandboxOptions
from tests.support.docker_service import podman_docker_service
from tests.support.kube_backend import fake_kube

ENTRYPOINT = Path(__file__).resolve().parents[3] / "dummy-job" / "entrypoint.sh"
TERMINAL = {RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.ERROR, RunPhase.CANCELED}
RESULT_KEY = "consumers/c1/files/result-1"
LOG_KEY = "consumers/c1/files/log-1"


@pytest.fixture
def storage(tmp_path: Path) -> FileStorageBackend:
    return FileStorageBackend(tmp_path / "files")


def kill_leftovers(work_dir: Path) -> None:
    """Tests end their jobs, but a failing test must not leave process trees behind."""
    for pid_file in work_dir.glob("*/runner.pid"):
        pid = int(pid_file.read_text().split()[0])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(pid_file.parent).encode() not in cmdline:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture
def local_work_dir(tmp_path: Path) -> Iterator[Path]:
    work_dir = tmp_path / "jobs"
    yield work_dir
    kill_leftovers(work_dir)


def make_local_backend(work_dir: Path, storage: FileStorageBackend) -> LocalWorkflowBackend:
    """The local backend as it runs in production: every worker in the bubblewrap sandbox."""
    sandbox = SandboxOptions(enabled=True, hidden=(storage.root,))
    return LocalWorkflowBackend(work_dir, storage, poll_interval=0.05, kill_grace=1.0, sandbox=sandbox)


# The containers.conf scripts/podman-setup writes (runc, explicit ulimits); `make test` runs it first.
PODMAN = Engine("podman", "/etc/wml/containers.conf")


# The side-car image scripts/sidecar-image builds (run by scripts/podman-setup).
SIDECAR_IMAGE = f"localhost/wml/sidecar:{importlib.metadata.version('workflow-middlelayer')}"


def make_container_backend(
    work_dir: Path, storage: FileStorageBackend, *, sidecar: bool = False
) -> ContainerWorkflowBackend:
    """The podman backend; with ``sidecar``, stage-in and stage-out run as side-car image containers."""
    if not sidecar:
        return ContainerWorkflowBackend(work_dir, storage, ContainerOptions(conf=PODMAN.conf, stop_timeout=2))
    options = ContainerOptions(conf=PODMAN.conf, stop_timeout=2, sidecar_image=SIDECAR_IMAGE)
    return ContainerWorkflowBackend(work_dir, storage, options, SidecarStorage(f"file://{storage.root}"))


def make_docker_backend(work_dir: Path, storage: FileStorageBackend, host: str) -> ContainerWorkflowBackend:
    """The same backend driving the docker CLI (against podman's Docker-compatible service)."""
    return ContainerWorkflowBackend(work_dir, storage, ContainerOptions("docker", host=host, stop_timeout=2))


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``DOCKER_HOST`` of a podman API service started for this test session."""
    with podman_docker_service(tmp_path_factory.mktemp("docker")) as host:
        yield host


async def remove_containers(work_dir: Path) -> None:
    """Tests clean up their runs, but a failing test must not leave containers behind."""
    instance = make_container_backend(work_dir, FileStorageBackend(work_dir)).instance
    _, out, _ = await PODMAN.run("ps", "-aq", "--filter", f"label=wml/instance={instance}")
    if out.split():
        await PODMAN.run("rm", "--force", "--time", "0", *out.split(), check=False)


@pytest.fixture
async def container_work_dir(tmp_path: Path) -> AsyncIterator[Path]:
    work_dir = tmp_path / "containers"
    yield work_dir
    await remove_containers(work_dir)


@pytest.fixture(params=["local", "kubernetes", "container", "container-sidecar", "docker"])
async def workflow_backend(
    request: pytest.FixtureRequest, storage: FileStorageBackend, local_work_dir: Path, tmp_path: Path
) -> AsyncIterator[WorkflowBackend]:
    if request.param in ("container", "container-sidecar", "docker"):
        work_dir = tmp_path / "containers"
        container = (
            make_docker_backend(work_dir, storage, request.getfixturevalue("docker_host"))
            if request.param == "docker"
            else make_container_backend(work_dir, storage, sidecar=request.param == "container-sidecar")
        )
        await container.start()
        try:
            yield container
        finally:
            await container.close()
            await remove_containers(work_dir)
        return
    if request.param == "kubernetes":
        async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}", run_pods=True) as kube:
            k8s = kube.backend(storage)
            await k8s.start()
            try:
                yield k8s
            finally:
                await k8s.close()
        return
    backend = make_local_backend(local_work_dir, storage)
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


@dataclass(frozen=True)
class BackendTraits:
    # Kubernetes runs stage-out as the Pod's main container, after the worker init container succeeded:
    # a failed worker's outputs are not uploaded (its log is).
    outputs_after_failure: bool


@pytest.fixture
def backend_traits(workflow_backend: WorkflowBackend) -> BackendTraits:
    return BackendTraits(outputs_after_failure=workflow_backend.name != "kubernetes")


@pytest.fixture
def process_group(workflow_backend: WorkflowBackend, local_work_dir: Path) -> Callable[[str], int | None]:
    """The process group a run's processes live in, where the backend has one on this machine."""

    def find(ref: str) -> int | None:
        pid_file = local_work_dir / ref / "runner.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    return find


@dataclass
class Updates:
    """Reads one backend's update stream, keeping what it saw per ref."""

    backend: WorkflowBackend
    seen: dict[str, list[BackendUpdate]] = field(default_factory=dict)
    _stream: AsyncIterator[BackendUpdate] | None = None

    async def next_for(self, ref: str, phases: set[RunPhase], timeout: float = 15) -> BackendUpdate:
        """The next update of ``ref`` in one of ``phases`` (earlier ones are kept in ``seen``)."""
        if self._stream is None:
            self._stream = self.backend.updates()
        async with asyncio.timeout(timeout):
            while True:
                update = await anext(self._stream)
                self.seen.setdefault(update.ref, []).append(update)
                if update.ref == ref and update.phase in phases:
                    return update

    async def terminal(self, ref: str, timeout: float = 15) -> BackendUpdate:
        return await self.next_for(ref, TERMINAL, timeout)

    def phases(self, ref: str) -> list[RunPhase]:
        return [u.phase for u in self.seen.get(ref, [])]


@pytest.fixture
def updates(workflow_backend: WorkflowBackend) -> Updates:
    return Updates(workflow_backend)


@pytest.fixture
def updates_of() -> Callable[[WorkflowBackend], Updates]:
    return Updates


@pytest.fixture
def local_backend_factory(
    local_work_dir: Path, storage: FileStorageBackend
) -> Callable[[], LocalWorkflowBackend]:
    """New local backend instances on one work dir: a server and its restarts."""
    return lambda: make_local_backend(local_work_dir, storage)


Upload = Callable[..., Awaitable[StagedInput]]


@pytest.fixture
def upload(storage: FileStorageBackend) -> Upload:
    """Store ``data`` under ``key`` and describe it as the input of ``slot`` (kind, path; ``keys``: what an
    env input may set, by default the dummy job's)."""

    async def put(
        key: str,
        data: bytes,
        slot: str,
        kind: InputKind,
        path: str,
        keys: tuple[str, ...] = ("SOURCE", "DESTINATION"),
    ) -> StagedInput:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        info = await storage.put(key, chunks())
        keys = keys if kind == InputKind.ENV else ()
        return StagedInput(slot, kind, path, key, info.size, hashlib.sha256(data).hexdigest(), keys)

    return put


async def placed_inputs(upload: Upload) -> tuple[StagedInput, StagedInput]:
    """The inputs of the placed-path tests: a file ``data`` (``input text``) and an archive ``maps`` holding
    ``town01.xodr`` (``road``)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        member = tarfile.TarInfo("town01.xodr")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"road"))
    data = await upload("consumers/c1/files/in-1", b"input text\n", "data", InputKind.FILE, "in.txt")
    maps = await upload("consumers/c1/files/in-2", archive.getvalue(), "maps", InputKind.ARCHIVE, "maps")
    return data, maps


RunFactory = Callable[..., JobRun]


@pytest.fixture
def make_run() -> RunFactory:
    """A JobRun of the dummy job; keyword arguments override its fields."""
    counter = iter(range(1, 1_000_000))

    def make(**overrides: Any) -> JobRun:
        fields: dict[str, Any] = {
            "job_id": f"job-{next(counter)}",
            "consumer_id": "c1",
            "asset_id": "dummy-job",
            "image": "localhost/wml/dummy-job:1",
            "command": ["/bin/sh", "/app/entrypoint.sh"],
            "args": None,
            "env": {"SLEEPTIME": "0", "FAIL": "0"},
            "resources": Resources(cpu=1.0, memory=256 * 1024 * 1024),
            "inputs": (),
            "outputs": (StagedOutput("result", "result.txt", True, f"{RESULT_KEY}-{next(counter)}"),),
            "log_key": f"{LOG_KEY}-{next(counter)}",
            "run_timeout": 30,
            "local_command": ["sh", str(ENTRYPOINT)],
        }
        fields.update(overrides)
        return JobRun(**fields)

    return make


@pytest.fixture
def read_object(storage: FileStorageBackend) -> Callable[[str], Awaitable[bytes]]:
    async def read(key: str) -> bytes:
        return b"".join([chunk async for chunk in storage.get(key)])

    return read
