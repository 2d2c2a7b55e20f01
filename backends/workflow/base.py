"""The workflow-backend protocol and the value types that cross it.

A backend receives a self-contained :class:`JobRun` (it never sees the database), runs stage-in, the
worker and stage-out, and reports what happened as :class:`BackendUpdate` values. The supervisor in
``core`` owns the job's life: it maps updates onto the state machine and enforces every deadline.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class InputKind(enum.StrEnum):
    FILE = "file"  # placed as a file at the slot path
    ARCHIVE = "archive"  # zip or tar (optionally compressed), extracted safely into the slot path
    ENV = "env"  # a dotenv file merged into the worker's environment


@dataclass(frozen=True, slots=True)
class StagedInput:
    slot: str
    kind: InputKind
    path: str  # relative to the inputs directory
    key: str  # storage key
    size: int
    sha256: str
    keys: tuple[str, ...] = ()  # env inputs: the only keys the file may set (any other is refused)
    # Where the worker sees it, when the asset places it (absolute: a file's own path, an archive's
    # directory); None: ``<inputs directory>/<path>``.
    worker_path: str | None = None


@dataclass(frozen=True, slots=True)
class StagedOutput:
    name: str
    path: str  # relative to the outputs directory
    required: bool
    key: str  # storage key the side-car uploads to (pre-allocated file id)


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: float = 1.0  # cores
    memory: int = 512 * 1024 * 1024  # bytes
    gpu: int = 0
    gpu_type: str | None = None


@dataclass(frozen=True, slots=True)
class JobRun:
    """Everything a backend needs to run one job."""

    job_id: str
    consumer_id: str
    asset_id: str
    image: str
    command: Sequence[str] | None
    args: Sequence[str] | None
    env: Mapping[str, str]  # asset env + parameters, already merged
    resources: Resources
    inputs: Sequence[StagedInput]
    outputs: Sequence[StagedOutput]
    log_key: str  # storage key for the full worker log
    run_timeout: int  # seconds the worker may run
    local_command: Sequence[str] | None = None  # for the local-process backend
    # The commands are the consumer's (the asset allows that), not the provider's: nothing is trusted
    # because they name it (the local sandbox binds no file they name; no unconfined local run).
    consumer_command: bool = False
    local_network: bool = False  # the local backend's sandbox keeps the network (else loopback only)
    labels: Mapping[str, str] = field(default_factory=dict)
    output_dir: str | None = None  # where the worker writes its outputs (absolute); None: the default


@dataclass(frozen=True, slots=True)
class RunNeeds:
    """What a job will ask of the backend beyond CPU and memory, known before the job exists: createJob
    refuses a job the backend cannot honour (:meth:`WorkflowBackend.refusal`) rather than run it without."""

    gpu: int = 0
    gpu_type: str | None = None
    container_paths: bool = False  # inputs or outputs at absolute paths of the worker's file system


class RunPhase(enum.StrEnum):
    """What a backend can say about a run; ``core`` maps these onto job states."""

    INITIALIZING = "INITIALIZING"  # accepted, staging inputs or waiting for resources
    RUNNING = "RUNNING"  # the worker process/container is running
    SUCCEEDED = "SUCCEEDED"  # worker exited 0 and every required output was uploaded
    FAILED = "FAILED"  # the worker's fault (non-zero exit, OOM, missing output, run timeout)
    ERROR = "ERROR"  # not the worker's fault (staging, image, eviction, lost)
    CANCELED = "CANCELED"  # stopped on request


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """One uploaded output, as read from the side-car's output manifest."""

    name: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BackendUpdate:
    ref: str
    phase: RunPhase
    reason: str | None = None  # a core.states.Reason name
    message: str | None = None
    exit_code: int | None = None
    outputs: Sequence[OutputRecord] = ()
    log: OutputRecord | None = None  # the uploaded full log, when the backend saved it
    log_tail: str | None = None  # the last lines of the worker log


class WorkflowBackendError(Exception):
    """The backend refused or failed an operation; the message never contains a secret."""


@runtime_checkable
class WorkflowBackend(Protocol):
    name: str
    # True when every replica of the service reaches the same jobs (Kubernetes): any replica may take a
    # dead one's jobs over. False for a host-bound backend (local processes, containers on one host): a
    # job stays with the replica that started it.
    shared: bool

    async def start(self) -> None:
        """Begin producing updates (open watches, start monitors). Called once by the owner."""
        ...

    async def close(self) -> None: ...

    def refusal(self, needs: RunNeeds) -> str | None:
        """Why this backend cannot run a job with ``needs`` (a sentence naming the backend), or None."""
        ...

    def reference(self, job_id: str, consumer_id: str) -> str:
        """The reference ``submit`` will return for this job, known before it starts: the supervisor
        stores it in the same transition that makes the job INITIALIZING, so an update that overtakes
        ``submit`` finds its job, and a restart that interrupted ``submit`` reconciles it."""
        ...

    async def submit(self, run: JobRun) -> str:
        """Start the run and return its backend reference (:meth:`reference`'s) quickly; progress arrives
        as updates. Submitting a run again (after a crash) follows the first one instead of starting twice."""
        ...

    async def cancel(self, ref: str) -> None:
        """Stop the run; idempotent, "not found" is success. A CANCELED update follows."""
        ...

    async def cleanup(self, ref: str) -> None:
        """Remove everything the run left in the backend (directories, pods, secrets)."""
        ...

    def updates(self) -> AsyncIterator[BackendUpdate]:
        """One endless stream of updates for every run of this backend."""
        ...

    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        """The current phase of each ref; a ref the backend no longer knows is ERROR/BACKEND_LOST."""
        ...

    def logs(self, ref: str, *, follow: bool) -> AsyncIterator[str]:
        """The worker's log lines so far, then (with ``follow``) new lines until the run ends."""
        ...
