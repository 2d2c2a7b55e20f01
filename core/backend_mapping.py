"""How jobs meet the workflow backend's terms: the run a job is submitted as, and what a backend update
writes to a job. Backend states map onto job states here and nowhere else:

| backend phase | job state      | notes                                               |
|---------------|----------------|-----------------------------------------------------|
| INITIALIZING  | INITIALIZING   | set by the supervisor itself when it submits        |
| RUNNING       | RUNNING        | run deadline = asset run timeout + cancel grace     |
| SUCCEEDED     | COMPLETE       | outputs and log recorded in the same transaction    |
| FAILED        | EXECUTOR_ERROR | non-zero exit, signal, OOM, missing output, timeout |
| ERROR         | SYSTEM_ERROR   | staging, submit, image, eviction, lost              |
| CANCELED      | CANCELED       | keeps the reason given when cancel was asked        |

Pure functions: the supervisor (:mod:`core.supervisor`) reads and writes the store around them.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import PurePosixPath

from backends.workflow.base import (
    BackendUpdate,
    JobRun,
    OutputRecord,
    Resources,
    RunNeeds,
    RunPhase,
    StagedInput,
    StagedOutput,
)
from backends.workflow.base import InputKind as BackendInputKind
from core.assets import Asset
from core.files import storage_key
from core.models import FileOrigin, FileRecord, FileStatus, Job, utcnow
from core.parameters import as_env
from core.states import JobState
from core.store import Change

PHASE_TO_STATE = {
    RunPhase.RUNNING: JobState.RUNNING,
    RunPhase.SUCCEEDED: JobState.COMPLETE,
    RunPhase.FAILED: JobState.EXECUTOR_ERROR,
    RunPhase.ERROR: JobState.SYSTEM_ERROR,
    RunPhase.CANCELED: JobState.CANCELED,
}


def derived_file_id(job_id: str, what: str) -> str:
    """A job's output or log file id, the same every time it is derived (a restarted backend uploads to
    the same key), and as short as every file id: file ids are at most 40 characters."""
    return "f_" + hashlib.sha256(f"{job_id}/{what}".encode()).hexdigest()[:32]


def build_run(job: Job, files: Mapping[str, FileRecord]) -> JobRun:
    """The run ``job`` is submitted as, its inputs staged from ``files`` (by file id)."""
    inputs = []
    for binding in job.inputs:
        record = files.get(binding.file_id)
        slot = job.asset.input_slot(binding.slot)
        if record is None or slot is None or record.sha256 is None:
            raise RuntimeError(f"input {binding.slot!r} is no longer available")
        inputs.append(
            StagedInput(
                slot=slot.name,
                kind=BackendInputKind(slot.kind.value),
                path=slot.target,
                key=record.storage_key,
                size=record.size,
                sha256=record.sha256,
                keys=tuple(slot.keys or ()),
                worker_path=slot.worker_path,
            )
        )
    # Output and log file ids are fixed now, so a backend that restarts uploads to the same keys.
    outputs = [
        StagedOutput(
            name=o.name,
            path=o.path,
            required=o.required,
            key=storage_key(job.consumer_id, derived_file_id(job.id, f"output/{o.name}")),
        )
        for o in job.asset.outputs
    ]
    asset = job.asset
    command, args, local_command = _commands(job)
    return JobRun(
        job_id=job.id,
        consumer_id=job.consumer_id,
        asset_id=asset.id,
        image=asset.image,
        command=command,
        args=args,
        env={**asset.env, **as_env(job.parameters)},
        resources=Resources(
            cpu=asset.resources.cpu,
            memory=asset.resources.memory,
            gpu=asset.resources.gpu,
            gpu_type=asset.resources.gpu_type,
        ),
        inputs=inputs,
        outputs=outputs,
        log_key=storage_key(job.consumer_id, derived_file_id(job.id, "log")),
        run_timeout=asset.timeouts.run,
        local_command=local_command,
        consumer_command=any(c != asset.command_line for c in job.details.commands),
        local_network=asset.local.network if asset.local else False,
        labels={"wml/job-id": job.id, "wml/consumer-id": job.consumer_id, "wml/asset-id": asset.id},
        output_dir=asset.output_directory,
    )


def run_needs(asset: Asset) -> RunNeeds:
    """What a job of ``asset`` will ask of the backend (checked when the job is created)."""
    placed = asset.output_directory is not None or any(s.worker_path for s in asset.inputs)
    return RunNeeds(gpu=asset.resources.gpu, gpu_type=asset.resources.gpu_type, container_paths=placed)


def _commands(job: Job) -> tuple[list[str] | None, list[str] | None, list[str] | None]:
    """What the worker runs (command, args, and the local backend's command): the asset's, or the job's own
    commands where the asset allowed them, in order in one shell that stops at the first failure (a job of
    several commands needs ``/bin/sh`` in the image). The asset's own command among them is its local
    command on the local backend."""
    asset = job.asset
    own = list(asset.local.command) if asset.local else None
    given = job.details.commands
    if not given:
        return asset.command, asset.args, own
    local = [own if c == asset.command_line and own else list(c) for c in given]
    if len(given) == 1:
        return list(given[0]), [], local[0]
    return in_order([list(c) for c in given]), [], in_order(local, interpreter="sh")


def in_order(commands: list[list[str]], interpreter: str = "/bin/sh") -> list[str]:
    """One argv that runs ``commands`` one after another with ``interpreter -c``, stopping at the first
    that fails (its exit code is the run's)."""
    return [interpreter, "-c", "set -e\n" + "\n".join(shlex.join(c) for c in commands)]


def change_for(job: Job, update: BackendUpdate, target: JobState, cancel_timeout: int) -> Change | None:
    """What applying ``update`` writes to ``job`` as it is now; None: it does not apply.

    ``cancel_timeout`` (seconds) is added to the run timeout for the RUNNING deadline."""
    if target == JobState.RUNNING:
        if job.state != JobState.INITIALIZING:
            return None
        deadline = utcnow() + timedelta(seconds=job.asset.timeouts.run + cancel_timeout)
        return Change(fields={"deadline_at": deadline})
    files = output_files(job, update.outputs, update.log)
    log_file = next((f.id for f in files if f.origin == FileOrigin.JOB_LOG), None)
    reason = update.reason
    if target == JobState.CANCELED and job.state == JobState.CANCELING:
        reason = job.reason or reason  # the reason given when cancel was asked
    return Change(
        reason=reason,
        message=update.message or (job.message if reason == job.reason else None),
        exit_code=update.exit_code,
        new_files=files,
        fields={"log_tail": update.log_tail, "log_file_id": log_file},
    )


def output_files(
    job: Job, outputs: Sequence[OutputRecord], log_record: OutputRecord | None
) -> list[FileRecord]:
    """The file records of the outputs and log a backend uploaded for ``job``."""
    now = utcnow()
    paths = {o.name: o.path for o in job.asset.outputs}
    records = []
    for out, origin in [
        *[(o, FileOrigin.JOB_OUTPUT) for o in outputs],
        *([(log_record, FileOrigin.JOB_LOG)] if log_record else []),
    ]:
        name = (
            f"{job.id}.log"
            if origin == FileOrigin.JOB_LOG
            else PurePosixPath(paths.get(out.name, out.name)).name
        )
        records.append(
            FileRecord(
                id=out.key.rsplit("/", 1)[-1],
                consumer_id=job.consumer_id,
                grant_id=job.grant_id,
                job_id=job.id,
                name=name,
                size=out.size,
                sha256=out.sha256,
                content_type="text/plain" if origin == FileOrigin.JOB_LOG else "application/octet-stream",
                origin=origin,
                status=FileStatus.READY,
                storage_key=out.key,
                created_at=now,
                expires_at=None,
            )
        )
    return records
