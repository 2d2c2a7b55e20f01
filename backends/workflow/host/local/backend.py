"""The local workflow backend: each job is a detached process tree on this machine.

A job runs as stage-in (the side-car's code, in-process; archives are extracted in a child process) ->
worker -> stage-out. The worker is started by a small runner (:mod:`backends.workflow.host.local.runner`)
in a new session, so it survives a restart of the server; the runner records everything in the job
directory (:mod:`backends.workflow.host.jobdir`) and a new backend instance adopts the job through
:meth:`LocalWorkflowBackend.reconcile`. The worker runs in a bubblewrap sandbox
(:mod:`backends.workflow.host.local.sandbox`); without bwrap the backend does not start, unless the
sandbox is turned off (``WML_LOCAL_SANDBOX=off``, development only).

How a run's end maps onto a terminal update is in :mod:`backends.workflow.host.outcome`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Self
from urllib.parse import parse_qsl, urlsplit

import structlog

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import BackendUpdate, JobRun, RunNeeds, RunPhase
from backends.workflow.host.jobdir import (
    ExitStatus,
    JobDir,
    detach,
    detached,
    launch,
    remove,
    signal_runner_group,
    valid_job_id,
    wait_runner_gone,
)
from backends.workflow.host.jobs import HostJobs, stage_inputs
from backends.workflow.host.local import sandbox
from backends.workflow.host.local.sandbox import SandboxOptions
from backends.workflow.host.outcome import outcome, upload_failed
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.manifest import (
    OutputEntry,
    StageOutManifest,
)
from sidecar.staging import stage_out

log = structlog.get_logger("wml.workflow.local")

_RUNNER_EXIT_WAIT = 5.0  # seconds the runner may take to exit after writing exit.json
# Seconds between looks at a running job whose runner's exit wakes the watcher anyway (through a pidfd):
# only a safety net. Without a pidfd the watcher looks every ``poll_interval``.
_SAFETY_POLL = 1.0
_MAX_LINE = 64 * 1024  # bytes of one log line kept before it is passed on unfinished
_READ_SIZE = 64 * 1024


class LocalWorkflowBackend(HostJobs):
    """Runs jobs as local processes under ``work_dir``; see the module docstring."""

    name = "local"
    kind = "local"

    def __init__(
        self,
        work_dir: Path,
        storage: StorageBackend,
        *,
        poll_interval: float = 0.2,
        log_tail_lines: int = 50,
        kill_grace: float = 5.0,
        sandbox: SandboxOptions = SandboxOptions(),
    ) -> None:
        super().__init__(work_dir)
        self._storage = storage
        self._sandbox = sandbox
        # What no worker may see: every job directory, and what the options name (data dir, files).
        self._hidden = (self._work_dir, *sandbox.hidden)
        self._poll = poll_interval
        self._tail_lines = log_tail_lines
        self._grace = kill_grace
        self._staging: set[str] = set()  # jobs in stage-in, which a cancel interrupts
        self._interrupted: set[str] = set()  # jobs whose stage-in a cancel interrupted
        self._closing = False
        self._removals: set[asyncio.Task[None]] = set()  # job directories being removed after cleanup

    @classmethod
    def from_url(cls, url: str, *, storage: StorageBackend, work_dir: Path, settings: Any = None) -> Self:
        """``local://`` with optional ``?poll_interval=&log_tail_lines=&kill_grace=``; ``settings`` gives
        the sandbox's ``WML_LOCAL_*`` values (:meth:`SandboxOptions.from_settings`)."""
        parts = urlsplit(url)
        if parts.netloc or parts.path.strip("/") or parts.fragment:
            raise ValueError("local workflow URLs take no host or path: use local://")
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"poll_interval", "log_tail_lines", "kill_grace"}
        if unknown:
            raise ValueError(f"unknown local workflow options: {', '.join(sorted(unknown))}")
        return cls(
            work_dir,
            storage,
            poll_interval=float(options.get("poll_interval", 0.2)),
            log_tail_lines=int(options.get("log_tail_lines", 50)),
            kill_grace=float(options.get("kill_grace", 5.0)),
            sandbox=SandboxOptions.from_settings(settings),
        )

    async def start(self) -> None:
        """Refuses to start (SandboxUnavailableError) when the sandbox is on and cannot be made here."""
        if self._sandbox.enabled:
            await asyncio.to_thread(sandbox.probe, self._sandbox)
        else:
            log.warning(
                "local_sandbox_off",
                detail="local workers run unconfined, as the server's user: development only",
            )
        await asyncio.to_thread(self._work_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        for leftover in await asyncio.to_thread(detached, self._work_dir):
            self._remove_later(leftover)

    async def close(self) -> None:
        """Stop watching; running workers are left alone so a new instance can adopt them."""
        self._closing = True
        await self._stop_tasks()
        await asyncio.gather(*self._removals, return_exceptions=True)

    def refusal(self, needs: RunNeeds) -> str | None:
        """No GPUs ever; absolute container paths only in the sandbox (which can bind them anywhere)."""
        if needs.gpu > 0 or needs.gpu_type:
            return (
                "it asks for a GPU and the local backend has none (use the container or Kubernetes backend)"
            )
        if needs.container_paths and not self._sandbox.enabled:
            return (
                "the local backend places inputs and outputs at absolute paths only in its sandbox, "
                "which is off (WML_LOCAL_SANDBOX=off)"
            )
        return None

    async def submit(self, run: JobRun) -> str:
        ref = run.job_id
        job = await self._new_job(run)
        if job is None:
            return ref
        placed = run.output_dir is not None or any(i.worker_path for i in run.inputs)
        needs = RunNeeds(gpu=run.resources.gpu, gpu_type=run.resources.gpu_type, container_paths=placed)
        refusal = self.refusal(needs)  # createJob refused it already; a job queued before is refused here
        if not run.local_command:
            message = f"asset {run.asset_id} has no local command, which the local backend needs"
            await self._finish(job, BackendUpdate(ref, RunPhase.ERROR, "SUBMIT_FAILED", message))
        elif refusal is not None:
            message = f"asset {run.asset_id} cannot run here: {refusal}"
            await self._finish(job, BackendUpdate(ref, RunPhase.ERROR, "SUBMIT_FAILED", message))
        elif run.consumer_command and not self._sandbox.enabled:
            message = "a consumer's own command runs only in the local sandbox, which is off here"
            await self._finish(job, BackendUpdate(ref, RunPhase.ERROR, "SUBMIT_FAILED", message))
        else:
            self._track(ref, self._pipeline(run, job))
        return ref

    async def cancel(self, ref: str) -> None:
        job = self._job(ref)
        if not valid_job_id(ref) or not await asyncio.to_thread(job.exists):
            return
        if await asyncio.to_thread(job.read_final) is not None:
            return
        await asyncio.to_thread(job.request_cancel)
        task = self._tasks.get(ref)
        if ref in self._staging and task is not None:
            self._interrupted.add(ref)
            task.cancel()
        # The watcher escalates to SIGKILL after the grace period; this only makes the stop prompt.
        await asyncio.to_thread(signal_runner_group, job, signal.SIGTERM)

    async def cleanup(self, ref: str) -> None:
        if not valid_job_id(ref):
            return
        job = self._job(ref)
        task = self._tasks.pop(ref, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Moved aside at once (the run is forgotten when this returns); killing what is left of it and
        # removing the files happen in the background, so a caller applying updates is not held up.
        moved = await asyncio.to_thread(detach, job)
        if moved is not None:
            self._remove_later(moved)

    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        return list(await asyncio.gather(*(self._reconcile_one(ref) for ref in refs)))

    async def logs(self, ref: str, *, follow: bool) -> AsyncIterator[str]:
        if not valid_job_id(ref):
            return
        job = self._job(ref)
        partial = b""
        # Held open from the first read on: the job directory is removed soon after the run ends, and
        # an open file can still be read to its end.
        log_file: BinaryIO | None = None
        try:
            while True:
                finished = await asyncio.to_thread(job.finished)
                if log_file is None:
                    log_file = await asyncio.to_thread(job.open_log)
                chunk = await asyncio.to_thread(log_file.read, _READ_SIZE) if log_file else b""
                if chunk:
                    *lines, partial = (partial + chunk).split(b"\n")
                    if len(partial) > _MAX_LINE:  # a line that never ends is passed on in pieces
                        lines.append(partial)
                        partial = b""
                    for line in lines:
                        yield line.decode("utf-8", errors="replace")
                elif not follow or finished or not await asyncio.to_thread(job.exists):
                    # Finished before this read: the read drained everything the worker wrote.
                    if partial:
                        yield partial.decode("utf-8", errors="replace")
                    return
                else:
                    await asyncio.sleep(self._poll)
        finally:
            if log_file is not None:
                log_file.close()

    # -- the pipeline ------------------------------------------------------------------------------

    async def _pipeline(self, run: JobRun, job: JobDir) -> None:
        dotenv = await self._stage_in(run, job)
        if dotenv is None:
            return
        spec = await asyncio.to_thread(
            sandbox.launch_spec, self._sandbox, run, job, dotenv, hidden=self._hidden, grace=self._grace
        )
        pid = await asyncio.to_thread(launch, job, spec)
        if pid is None:  # canceled during stage-in
            await self._complete(run, job, None)
            return
        log.info("local_worker_started", job_id=run.job_id, runner_pid=pid)
        self._emit(BackendUpdate(run.job_id, RunPhase.RUNNING))
        await self._watch(run, job)

    async def _stage_in(self, run: JobRun, job: JobDir) -> dict[str, str] | None:
        """Fetch the inputs and parse the env-file ones; None when the run ended here (already reported)."""
        ref = run.job_id
        self._staging.add(ref)
        try:
            dotenv: dict[str, str] = {}
            if await asyncio.to_thread(job.cancel_requested_at) is None:
                dotenv = await stage_inputs(self._storage, run, job)
        except (InputStagingError, StorageError, OSError, ValueError) as e:
            message = f"staging the inputs failed: {e}"
            await self._finish(job, BackendUpdate(ref, RunPhase.ERROR, "INPUT_STAGING_FAILED", message))
            return None
        except asyncio.CancelledError:
            if self._closing or ref not in self._interrupted:
                raise
            # Canceled on request (not by close()): answer it instead of dying.
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._complete(run, job, None)
            return None
        finally:
            self._staging.discard(ref)
            self._interrupted.discard(ref)
        return dotenv

    async def _watch(self, run: JobRun, job: JobDir) -> None:
        """Wait for the runner to exit (after a restart it is not our child: woken through a pidfd, or
        polling where there is none), then finish."""
        pidfd = await asyncio.to_thread(job.open_runner_pidfd)
        try:
            status = await self._wait_for_exit(job, pidfd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if status is None:  # the runner died without saying how the worker ended: keep why, if it knows
            said = await asyncio.to_thread(job.runner_log_tail)
            log.warning("local_runner_vanished", job_id=run.job_id, runner_log=said)
        await self._complete(run, job, status)

    async def _wait_for_exit(self, job: JobDir, pidfd: int | None) -> ExitStatus | None:
        """exit.json once the runner is gone (None: it died without one); escalates a requested cancel."""
        term_sent = False
        while True:
            ended, status, asked_at = await asyncio.to_thread(_look, job)
            if ended:
                return status
            timeout = self._poll if pidfd is None else _SAFETY_POLL
            if asked_at is not None:
                kill_at = asked_at + self._grace + 2 * self._poll + 1
                if not term_sent:
                    await asyncio.to_thread(signal_runner_group, job, signal.SIGTERM)
                    term_sent = True
                elif time.time() > kill_at:
                    await asyncio.to_thread(signal_runner_group, job, signal.SIGKILL)
                timeout = min(timeout, max(self._poll, kill_at - time.time()))
            await _readable(pidfd, timeout)

    async def _complete(self, run: JobRun, job: JobDir, status: ExitStatus | None) -> None:
        """Stage out (only the log when canceled), classify the outcome, and report it."""
        asked_at, tail = await asyncio.to_thread(
            lambda: (job.cancel_requested_at(), job.tail(self._tail_lines))
        )
        canceled = asked_at is not None and (status is None or status.terminated or status.error is not None)
        manifest = StageOutManifest(
            outputs=[]
            if canceled
            else [OutputEntry(name=o.name, path=o.path, required=o.required, key=o.key) for o in run.outputs],
            log_path=str(job.worker_log),
            log_key=run.log_key,
            result_path=str(job.output_manifest),
        )
        try:
            uploaded = await stage_out(self._storage, manifest, job.outputs)
        except (OutputUploadError, StorageError, OSError) as e:
            update = upload_failed(run, status, e)
        else:
            update = outcome(run, status, canceled, uploaded)
        await self._finish(job, replace(update, log_tail=tail))

    # -- reconcile -----------------------------------------------------------------------------------

    async def _reconcile_one(self, ref: str) -> BackendUpdate:
        try:
            return await self._reconcile_job(ref)
        except Exception as e:  # every ref gets an answer
            log.exception("local_reconcile_failed", job_id=ref)
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", f"cannot read the job's state: {e}")

    async def _reconcile_job(self, ref: str) -> BackendUpdate:
        job = self._job(ref)
        if not valid_job_id(ref) or not await asyncio.to_thread(job.exists):
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the local backend has no such job")
        final = await asyncio.to_thread(job.read_final)
        if final is not None:
            return final
        run = await asyncio.to_thread(job.read_run)
        launched = await asyncio.to_thread(job.launched)
        # A written exit status means the worker is done, even if its runner has yet to exit.
        alive = await asyncio.to_thread(job.read_exit) is None and await asyncio.to_thread(job.runner_alive)
        # No await from this check to _track: two reconciles never start two watchers.
        if ref in self._tasks:
            return BackendUpdate(ref, RunPhase.RUNNING if launched else RunPhase.INITIALIZING)
        if run is None:
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the job's run record is missing")
        if not launched:
            # The server stopped during stage-in: nothing ran yet, so stage in again and go on.
            log.info("local_job_restaged", job_id=ref)
            self._track(ref, self._pipeline(run, job))
            return BackendUpdate(ref, RunPhase.INITIALIZING)
        task = self._track(ref, self._watch(run, job))
        if alive:
            log.info("local_job_adopted", job_id=ref)
            return BackendUpdate(ref, RunPhase.RUNNING)
        # The worker ended (or its runner died) while nobody watched: stage out now and report.
        await asyncio.shield(task)
        final = await asyncio.to_thread(job.read_final)
        if final is None:
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "adopting the finished job failed")
        return final

    # -- plumbing ------------------------------------------------------------------------------------

    def _remove_later(self, job: JobDir) -> None:
        task = asyncio.create_task(self._remove(job), name=f"local-remove-{job.root.name}")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, job: JobDir) -> None:
        try:
            await asyncio.to_thread(remove, job, _RUNNER_EXIT_WAIT)
        except OSError:
            log.exception("local_job_removal_failed", job_dir=job.root.name)


def _look(job: JobDir) -> tuple[bool, ExitStatus | None, float | None]:
    """One look at a launched job (blocking): ``(ended, exit status, when a cancel was asked)``.

    Ended means the runner is gone, or going: a written exit status says the worker is done even if
    its runner has yet to exit, so this waits (briefly) for the runner to go.
    """
    status = job.read_exit()
    if status is None and job.runner_alive():
        return False, None, job.cancel_requested_at()
    if status is None:  # it may have written the file just before exiting
        status = job.read_exit()
    wait_runner_gone(job, _RUNNER_EXIT_WAIT)
    return True, status, None


async def _readable(fd: int | None, seconds: float) -> None:
    """Wait until ``fd`` is readable or ``seconds`` passed (only the time, without an fd)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if fd is None:  # no pidfd for this runner: only the safety-net interval
        await asyncio.sleep(seconds)
        return
    loop.add_reader(fd, wake)
    try:
        await asyncio.wait([ready], timeout=seconds)
    finally:
        loop.remove_reader(fd)
