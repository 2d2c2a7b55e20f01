"""What the two single-host backends (local processes, podman containers) share: one job directory per
run, inputs staged in-process with the side-car's code, and one owned task per running job whose
outcome always ends in a terminal update on the backend's single update stream."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from backends.storage.base import StorageBackend
from backends.workflow.base import BackendUpdate, InputKind, JobRun, RunPhase, WorkflowBackendError
from backends.workflow.host.jobdir import JobDir, valid_job_id
from sidecar.dotenv import accepted, read_dotenv
from sidecar.manifest import InputEntry, StageInManifest
from sidecar.staging import stage_in


async def stage_inputs(storage: StorageBackend, run: JobRun, job: JobDir) -> dict[str, str]:
    """Fetch the run's inputs into the job directory (afresh) and return its env-file values.

    Raises the side-car's staging errors (and StorageError, OSError, ValueError for a bad env file).
    """
    manifest = StageInManifest(
        inputs=[
            InputEntry(slot=i.slot, kind=str(i.kind), path=i.path, key=i.key, size=i.size, sha256=i.sha256)
            for i in run.inputs
        ]
    )
    await asyncio.to_thread(job.clear_inputs)  # a re-run after a restart starts afresh
    await stage_in(storage, manifest, job.inputs)
    return await asyncio.to_thread(env_input_values, run, job.inputs)


def env_input_values(run: JobRun, inputs: Path) -> dict[str, str]:
    """The values of the run's staged ``env`` inputs; ValueError when one sets a key its slot does not
    accept (createJob refused such a file already: this is the backend's own check of what it runs)."""
    values: dict[str, str] = {}
    for staged in (i for i in run.inputs if i.kind == InputKind.ENV):
        try:
            values.update(accepted(read_dotenv(inputs / staged.path), staged.keys))
        except ValueError as e:
            raise ValueError(f"input {staged.slot!r}: {e}") from None
    return values


class HostJobs(abc.ABC):
    """Job directories, the update stream and the owned per-job tasks of a single-host backend."""

    kind = "host"  # names the backend in log events and task names
    shared = False  # a job lives on the host whose replica started it

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = Path(work_dir).absolute()
        self._queue: asyncio.Queue[BackendUpdate] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # job id -> its pipeline or watcher
        self._log = structlog.get_logger(f"wml.workflow.{self.kind}")

    async def updates(self) -> AsyncIterator[BackendUpdate]:
        while True:
            yield await self._queue.get()

    async def _stop_tasks(self) -> None:
        """Cancel and await every owned task (the workers themselves are left running)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _job(self, ref: str) -> JobDir:
        return JobDir(self._work_dir / ref)

    @abc.abstractmethod
    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        """Each backend reconciles its own way (a retried submit relies on it, see ``_new_job``)."""

    def reference(self, job_id: str, consumer_id: str) -> str:
        """A host job is named by its job id (its directory's name)."""
        return job_id

    async def _new_job(self, run: JobRun) -> JobDir | None:
        """The first step of every submit: the run's job directory, created, and INITIALIZING reported.

        None when the job was submitted before (a retry after a crash or a lost answer): it is then
        reconciled, so it is followed again rather than started twice.
        """
        ref = run.job_id
        if not valid_job_id(ref):
            raise WorkflowBackendError(f"job id {ref!r} cannot name a job directory")
        job = self._job(ref)
        try:
            await asyncio.to_thread(job.create, run)  # refuses an existing directory: no check-then-act
        except FileExistsError:
            await self.reconcile([ref])
            return None
        except OSError as e:
            raise WorkflowBackendError(f"cannot create the job directory: {e.strerror}") from e
        self._emit(BackendUpdate(ref, RunPhase.INITIALIZING))
        return job

    def _emit(self, update: BackendUpdate) -> None:
        self._queue.put_nowait(update)

    async def _finish(self, job: JobDir, update: BackendUpdate) -> None:
        """Record the terminal update in the job directory (reconcile re-emits it) and report it."""
        await asyncio.to_thread(job.write_final, update)
        self._log.info(
            f"{self.kind}_job_finished", job_id=update.ref, phase=update.phase, reason=update.reason
        )
        self._emit(update)

    def _track(self, ref: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guarded(ref, work), name=f"{self.kind}-job-{ref}")
        self._tasks[ref] = task
        task.add_done_callback(lambda t: self._tasks.pop(ref) if self._tasks.get(ref) is t else None)
        return task

    async def _guarded(self, ref: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a job never ends without a terminal update
            self._log.exception(f"{self.kind}_job_failed", job_id=ref)
            message = f"the {self.kind} backend failed: {type(e).__name__}: {e}"
            await self._finish(self._job(ref), BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", message))
