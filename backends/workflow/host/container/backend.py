"""The container workflow backend (``container://podman``, ``container://docker``): workers as containers.

A job runs as stage-in (the side-car's code, into ``<work_dir>/<job id>/inputs``), then the worker as a
container of the asset's image (``--pull=never`` unless configured; inputs mounted read-only, outputs
writable, no network, CPU, memory and process limits, GPU devices when configured, a uid of the job's own
(when the server runs as root), no capabilities, no new privileges, a read-only root with a tmpfs ``/tmp``,
the environment through an env file, ulimits, ownership labels), then stage-out (the outputs and the
container's log, saved at the run's ``log_key``). The side-car steps run in-process, or with
``?sidecar_image=...`` as containers of that image (:mod:`backends.workflow.host.container.sidecar`; the
storage settings then come from the service's settings). The job directory is the same
:class:`~backends.workflow.host.jobdir.JobDir` the local backend uses, so state survives a restart. Options
come from the URL (:mod:`backends.workflow.host.container.config`).

**CLI, not the API socket.** The engine is driven through its command line (asyncio subprocesses): a root
podman on a host like ours has no service running (``podman system service`` would be one more daemon to
start, supervise and secure), the CLI needs no extra Python dependency, and every call is a short
process, so a crashed or restarted server leaves nothing half-open. The docker CLI talks to whatever
``DOCKER_HOST`` (the ``host`` option) names: a Docker engine, or podman's Docker-compatible service.

**Status without polling.** Each running container is followed by one ``wait`` (a blocking call,
woken by the engine when the container exits), bounded by the run timeout; after a restart
:meth:`ContainerWorkflowBackend.reconcile` lists this instance's containers by label and re-attaches a
``wait`` to each running one. The exit maps like the Kubernetes table: ``State.OOMKilled`` (or a SIGKILL
exit, 137, that we did not send: on cgroup v1 podman does not always record OOMKilled) ->
FAILED/OOM_KILLED; timeout -> FAILED/RUN_TIMEOUT; non-zero -> FAILED/NONZERO_EXIT (see
:mod:`backends.workflow.host.outcome`, shared with the local backend).

**Orphan sweep.** Every reconcile (at start-up and then periodically, driven by the supervisor) also
removes this instance's containers that no task here follows and whose job is not among the live refs it
was given (unknown to the service, or already terminal) or has lost its job directory.

Container names are ``wml-<instance>-<job id>``, the instance being a digest of the work directory, so two
services (or test workers) on one host never touch each other's containers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Self

import structlog

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import BackendUpdate, JobRun, Resources, RunNeeds, RunPhase, WorkflowBackendError
from backends.workflow.host.container.cli import (
    SIDECAR_STEPS,
    ContainerState,
    GpuUnavailableError,
    container_env,
    gpu_args,
    run_args,
    write_env_file,
)
from backends.workflow.host.container.config import ContainerOptions, parse_container_url
from backends.workflow.host.container.sidecar import SidecarSteps, SidecarStorage
from backends.workflow.host.jobdir import ExitStatus, JobDir, valid_job_id
from backends.workflow.host.jobs import HostJobs, stage_inputs
from backends.workflow.host.outcome import outcome, upload_failed
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.manifest import OutputEntry, OutputManifest, StageOutManifest
from sidecar.staging import stage_out

log = structlog.get_logger("wml.workflow.container")

STARTED_FILE = "container-started"  # in the job directory: its mtime is when the worker container started
ENV_FILE = "worker.env"  # in the job directory (0600): the worker's environment, for --env-file


class ContainerWorkflowBackend(HostJobs):
    """Runs each job's worker as a podman or docker container; see the module docstring."""

    name = "container"
    kind = "container"

    def __init__(
        self,
        work_dir: Path,
        storage: StorageBackend,
        options: ContainerOptions | None = None,
        sidecar_storage: SidecarStorage | None = None,
    ) -> None:
        """``sidecar_storage``: how side-car containers reach ``storage`` (needed with a side-car image)."""
        super().__init__(work_dir)
        self._storage = storage
        self._options = options or ContainerOptions()
        self._engine = self._options.make_engine(cwd=str(self._work_dir))
        self._instance = hashlib.sha256(str(self._work_dir).encode()).hexdigest()[:10]
        self._timed_out: set[str] = set()
        self._sidecar: SidecarSteps | None = None
        if self._options.sidecar_image:
            if sidecar_storage is None:
                raise ValueError("sidecar_image needs the storage settings the side-car containers use")
            self._sidecar = SidecarSteps(
                self._engine,
                self._options.sidecar_image,
                sidecar_storage,
                self._instance,
                files=storage,
                network=self._options.sidecar_network,
                pull=self._options.pull,
                timeout=self._options.sidecar_timeout,
                memory=self._options.sidecar_memory,
                pids_limit=self._options.pids_limit,
            )

    @classmethod
    def from_url(
        cls, url: str, *, storage: StorageBackend, work_dir: Path, settings: object | None = None
    ) -> Self:
        """``container://podman`` or ``container://docker``, options as in :func:`parse_container_url`."""
        return cls(work_dir, storage, parse_container_url(url), SidecarStorage.from_settings(settings))

    @property
    def instance(self) -> str:
        """This backend's label value ``wml/instance`` (a digest of its work directory)."""
        return self._instance

    async def start(self) -> None:
        await asyncio.to_thread(self._work_dir.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        """Stop following; containers keep running so a new instance can re-attach to them."""
        await self._stop_tasks()

    def refusal(self, needs: RunNeeds) -> str | None:
        """GPUs only as configured (``gpus``/``gpu_type`` options); absolute container paths always work."""
        options = self._options
        try:
            gpu_args(
                Resources(gpu=needs.gpu, gpu_type=needs.gpu_type),
                gpus=options.gpus,
                gpu_type=options.gpu_type,
            )
        except GpuUnavailableError as e:
            return f"the container backend cannot honour its GPU request: {e}"
        return None

    async def submit(self, run: JobRun) -> str:
        options = self._options
        gpu_args(run.resources, gpus=options.gpus, gpu_type=options.gpu_type)  # GpuUnavailableError
        job = await self._new_job(run)
        if job is not None:
            self._track(run.job_id, self._pipeline(run, job))
        return run.job_id

    async def cancel(self, ref: str) -> None:
        job = self._job(ref)
        if not valid_job_id(ref) or not await asyncio.to_thread(job.exists):
            return
        if await asyncio.to_thread(job.read_final) is not None:
            return
        await asyncio.to_thread(job.request_cancel)
        task = self._tasks.get(ref)
        if task is not None and not await asyncio.to_thread(job.launched):
            task.cancel()  # still staging: the cancel is answered below
            await asyncio.gather(task, return_exceptions=True)
            if self._sidecar is not None:
                await self._sidecar.remove(self._name(ref))  # a stage-in container left by a restart
            await self._complete(job, None)
            return
        await self._stop(ref)  # the follower sees the exit and reports CANCELED

    async def cleanup(self, ref: str) -> None:
        if not valid_job_id(ref):
            return
        task = self._tasks.pop(ref, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._engine.remove(self._name(ref))
        if self._sidecar is not None:
            await self._sidecar.remove(self._name(ref))
        await asyncio.to_thread(shutil.rmtree, self._job(ref).root, ignore_errors=True)

    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        try:
            containers = await self._engine.managed(self._instance)
        except (WorkflowBackendError, ValueError) as e:
            message = f"cannot list the containers: {e}"
            return [BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", message) for ref in refs]
        results = list(await asyncio.gather(*(self._reconcile_one(ref, containers) for ref in refs)))
        await self._sweep(set(refs), containers)
        return results

    async def logs(self, ref: str, *, follow: bool) -> AsyncIterator[str]:
        """``podman logs [--follow]`` while the container exists, else the log saved in the job dir."""
        if not valid_job_id(ref):
            return
        job = self._job(ref)
        if await self._engine.inspect(self._name(ref)) is not None:
            args = ["logs", *(["--follow"] if follow else []), self._name(ref)]
            async for line in self._engine.stream(*args):
                yield line.decode("utf-8", errors="replace").rstrip("\n")
            return
        text = await asyncio.to_thread(job.tail, 1_000_000, 64 * 1024 * 1024)
        for saved in text.splitlines():
            yield saved

    # -- the pipeline ------------------------------------------------------------------------------

    async def _pipeline(self, run: JobRun, job: JobDir) -> None:
        dotenv = await self._stage_in(run, job)
        if dotenv is None:
            return
        if await asyncio.to_thread(job.cancel_requested_at) is not None:
            await self._complete(job, None)
            return
        options = self._options
        env_file = str(job.root / ENV_FILE)
        try:
            await asyncio.to_thread(write_env_file, env_file, container_env(run, dotenv))
        except ValueError as e:
            await self._finish(job, BackendUpdate(run.job_id, RunPhase.ERROR, "SUBMIT_FAILED", str(e)))
            return
        args = run_args(
            run,
            name=self._name(run.job_id),
            instance=self._instance,
            env_file=env_file,
            inputs=str(job.inputs),
            outputs=str(job.outputs),
            user=options.user_for(run.job_id),
            ulimits=options.ulimits,
            network=options.network,
            pull=options.pull,
            devices=gpu_args(run.resources, gpus=options.gpus, gpu_type=options.gpu_type),
            docker=self._engine.docker,
            pids_limit=options.pids_limit,
            tmp_size=options.tmp_size,
        )
        await asyncio.to_thread(job.write_launch, {"args": args})
        code, _, err = await self._engine.run(*args, check=False)
        if code != 0:
            message = f"the worker container could not be started: {err.strip()[-500:]}"
            await self._finish(job, BackendUpdate(run.job_id, RunPhase.ERROR, "SUBMIT_FAILED", message))
            return
        await asyncio.to_thread((job.root / STARTED_FILE).touch)
        log.info("container_worker_started", job_id=run.job_id)
        if await asyncio.to_thread(job.cancel_requested_at) is not None:
            await self._stop(run.job_id)  # a cancel that came while the container was being created
        self._emit(BackendUpdate(run.job_id, RunPhase.RUNNING))
        await self._follow(run, job)

    async def _stage_in(self, run: JobRun, job: JobDir) -> dict[str, str] | None:
        """Fetch the inputs and parse the env-file ones; None when the run ended here (already reported)."""
        try:
            user = self._options.user_for(run.job_id)
            await asyncio.to_thread(_open_for_worker, job, user)  # the side-car step writes as the user
            if self._sidecar is not None:
                dotenv = await self._sidecar.stage_in(run, job, self._name(run.job_id), user)
            else:
                dotenv = await stage_inputs(self._storage, run, job)
            await asyncio.to_thread(_open_for_worker, job, user)
        except (InputStagingError, StorageError, OSError, ValueError) as e:
            message = f"staging the inputs failed: {e}"
            await self._finish(
                job, BackendUpdate(run.job_id, RunPhase.ERROR, "INPUT_STAGING_FAILED", message)
            )
            return None
        return dotenv

    async def _follow(self, run: JobRun, job: JobDir) -> None:
        """``podman wait`` for the exit (bounded by the run timeout), then stage out and report."""
        ref, name = run.job_id, self._name(run.job_id)
        # The deadline counts from the container's start, so a restarted server does not extend it.
        started = await asyncio.to_thread(_started_at, job)
        budget = max(0.0, run.run_timeout - (time.time() - started)) if started else run.run_timeout
        try:
            async with asyncio.timeout(budget):
                await self._engine.run("wait", name, check=False)
        except TimeoutError:
            self._timed_out.add(ref)
            await self._stop(ref)
        await self._complete(job, await self._engine.inspect(name))

    async def _complete(self, job: JobDir, state: ContainerState | None) -> None:
        """Save the container log, stage out (only the log when canceled), classify, and report."""
        run = await asyncio.to_thread(job.read_run)
        assert run is not None
        ref = run.job_id
        canceled = await asyncio.to_thread(job.cancel_requested_at) is not None
        timed_out = ref in self._timed_out
        status = None
        if state is not None:
            code = state.exit_code if state.exit_code is not None else -1
            oom = state.oom_killed or (code == 137 and not canceled and not timed_out)
            status = ExitStatus(exit_code=code, timed_out=timed_out, oom=oom, terminated=canceled)
            canceled = canceled and code != 0
        elif canceled:
            status = ExitStatus(exit_code=None, terminated=True)
        await self._save_log(job)
        manifest = StageOutManifest(
            outputs=[]
            if canceled
            else [OutputEntry(name=o.name, path=o.path, required=o.required, key=o.key) for o in run.outputs],
            log_path=str(job.worker_log),
            log_key=run.log_key,
            result_path=str(job.output_manifest),
        )
        tail = await asyncio.to_thread(job.tail, self._options.log_tail_lines)
        try:
            uploaded = await self._stage_out(run, job, manifest)
        except (OutputUploadError, StorageError, OSError) as e:
            update = upload_failed(run, status, e)
        else:
            update = outcome(run, status, canceled, uploaded)
        self._timed_out.discard(ref)
        await self._finish(job, replace(update, log_tail=tail))

    async def _stage_out(self, run: JobRun, job: JobDir, manifest: StageOutManifest) -> OutputManifest:
        if self._sidecar is not None:
            user = self._options.user_for(run.job_id)
            return await self._sidecar.stage_out(run, job, self._name(run.job_id), manifest, user)
        return await stage_out(self._storage, manifest, job.outputs)

    async def _save_log(self, job: JobDir) -> None:
        """Write the container's whole log into the job directory (stage-out uploads it from there)."""
        name = self._name(job.root.name)
        if await self._engine.inspect(name) is None:
            return  # never started (canceled while staging): the log stays empty
        with open(job.worker_log, "wb") as f:  # noqa: ASYNC230 - small local writes between awaits
            async for line in self._engine.stream("logs", name):
                f.write(line)

    async def _stop(self, ref: str) -> None:
        await self._engine.stop(self._name(ref), self._options.stop_timeout)

    # -- reconcile -----------------------------------------------------------------------------------

    async def _reconcile_one(self, ref: str, containers: dict[str, bool]) -> BackendUpdate:
        job = self._job(ref)
        if not valid_job_id(ref) or not await asyncio.to_thread(job.exists):
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the container backend has no such job")
        final = await asyncio.to_thread(job.read_final)
        if final is not None:
            return final
        launched = await asyncio.to_thread(job.launched)
        if ref in self._tasks:
            return BackendUpdate(ref, RunPhase.RUNNING if launched else RunPhase.INITIALIZING)
        run = await asyncio.to_thread(job.read_run)
        if run is None:
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the job's run record is missing")
        if not launched:  # the server stopped during stage-in: stage in again and go on
            self._track(ref, self._pipeline(run, job))
            return BackendUpdate(ref, RunPhase.INITIALIZING)
        name = self._name(ref)
        if name not in containers:
            message = "the job's container is gone"
            await self._finish(job, BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", message))
            return BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", message)
        task = self._track(ref, self._follow(run, job))
        if containers[name]:
            log.info("container_job_adopted", job_id=ref)
            return BackendUpdate(ref, RunPhase.RUNNING)
        await asyncio.shield(task)  # it ended while nobody watched: finish it now
        return await asyncio.to_thread(job.read_final) or BackendUpdate(
            ref, RunPhase.ERROR, "BACKEND_LOST", "adopting the finished container failed"
        )

    async def _sweep(self, live: set[str], containers: dict[str, bool]) -> None:
        """Remove this instance's containers that no task of ours follows and no live job owns.

        Their jobs are not listed as live by the caller (unknown to it, or already terminal), or their job
        directory is gone. A finished job's log was saved before its terminal update: nothing is lost.
        """
        prefix = self._name("")
        for name in containers:
            ref = name.removeprefix(prefix)
            for step in SIDECAR_STEPS:  # a side-car step's container is named after its job, plus .<step>
                ref = ref.removesuffix(f".{step}")
            if ref in self._tasks:
                continue
            if ref in live and valid_job_id(ref) and await asyncio.to_thread(self._job(ref).exists):
                continue
            await self._engine.remove(name)
            log.info("container_orphan_swept", job_id=ref, container=name)

    # -- plumbing ------------------------------------------------------------------------------------

    def _name(self, ref: str) -> str:
        return f"wml-{self._instance}-{ref}"


def _open_for_worker(job: JobDir, user: str | None) -> None:
    """Let the container's user read the inputs and write the outputs: owned by it when we are root."""
    uid, _, gid = (user or "").partition(":")
    if os.geteuid() == 0 and uid.isdigit() and (gid or uid).isdigit():
        for top in (job.inputs, job.outputs):
            os.chown(top, int(uid), int(gid or uid))
            for root, dirs, files in os.walk(top):
                for entry in (*dirs, *files):
                    os.chown(os.path.join(root, entry), int(uid), int(gid or uid), follow_symlinks=False)
        return
    # Not root (or a named user): open the job's own, private directories up instead.
    for root, dirs, files in os.walk(job.inputs):
        for d in (root, *(os.path.join(root, d) for d in dirs)):
            os.chmod(d, 0o755)  # noqa: S103 - inside the private job directory; mounted read-only
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.chmod(job.outputs, 0o777)  # noqa: S103 - inside the private job directory


def _started_at(job: JobDir) -> float | None:
    try:
        return (job.root / STARTED_FILE).stat().st_mtime
    except FileNotFoundError:
        return None
