"""The container backend's side-car-image mode: stage-in and stage-out as containers of the side-car image.

Like the Kubernetes pod, a job then runs as three containers in turn: ``wml sidecar stage-in`` (into the
job directory's ``inputs``), the worker, and ``wml sidecar stage-out`` (only the log when canceled). Each
side-car step runs in the foreground (``run --rm``), named ``wml-<instance>-<job id>.<step>`` and labelled
like the worker, so the orphan sweep knows whose it is; a leftover of an earlier try (a server restart
in the middle of a step) is removed before the step runs again.

The manifest of a step is written into the job directory, mounted at ``/wml/job``, with paths as the
container sees them; stage-out writes the output manifest there too, and it is read back from the host
side exactly as the in-process path returns it. The storage settings (``WML_STORAGE`` and the S3 keys)
go into the engine CLI's own environment and are passed to the container by name only (``--env NAME``),
so no secret appears on a command line. The side-car runs as root inside its container with every
capability dropped except ``DAC_OVERRIDE`` (to read the worker's outputs and write into the job directory,
which are all it has mounted), and no new privileges.

Exit codes of ``wml sidecar`` (see :mod:`sidecar.main`) map onto the same errors as the in-process path:
a failed stage-in raises :class:`~sidecar.errors.InputStagingError`, a failed stage-out
:class:`~sidecar.errors.OutputUploadError` (exit 4, a required output missing, is not a failure here: the
output manifest says what is missing and the outcome table decides).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import ValidationError

from backends.workflow.base import JobRun
from backends.workflow.host.container.cli import SIDECAR_JOB_MOUNT, Engine, sidecar_args
from backends.workflow.host.jobdir import JobDir
from backends.workflow.host.jobs import env_input_values
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.manifest import InputEntry, OutputManifest, StageInManifest, StageOutManifest

log = structlog.get_logger("wml.workflow.container")

STAGE_IN_MANIFEST = "stage-in.json"  # in the job directory
STAGE_OUT_MANIFEST = "stage-out.json"
EXIT_OUTPUT_MISSING = 4  # sidecar.main: the output manifest was written; a required output is missing
# Standard AWS settings the side-car may need when no explicit S3 keys are configured (passed by name;
# the engine copies each from its environment when it is set there).
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@dataclass(frozen=True, slots=True)
class SidecarStorage:
    """The storage as the side-car containers reach it: ``WML_STORAGE`` and its credentials."""

    url: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # WML_S3_ACCESS_KEY_ID, ...

    @classmethod
    def from_settings(cls, settings: Any) -> SidecarStorage | None:
        """From the service's settings (``resolved_storage_url``, the S3 keys); None without them."""
        if settings is None:
            return None
        env = {}
        credentials = settings.storage_credentials()
        if credentials is not None:
            env["WML_S3_ACCESS_KEY_ID"] = credentials.access_key_id
            env["WML_S3_SECRET_ACCESS_KEY"] = credentials.secret_access_key
        return cls(str(settings.resolved_storage_url()), env)

    @property
    def root(self) -> str | None:
        """A ``file://`` storage's directory (mounted into the side-car at its own path), else None."""
        parts = urlsplit(self.url)
        return unquote(parts.path) if parts.scheme == "file" else None

    def cli_env(self) -> dict[str, str]:
        return {"WML_STORAGE": self.url, **self.env}

    def names(self) -> list[str]:
        return ["WML_STORAGE", *self.env, *AWS_ENV]


@dataclass(frozen=True, slots=True)
class SidecarSteps:
    """Runs one job's side-car steps as containers (see the module docstring)."""

    engine: Engine
    image: str
    storage: SidecarStorage
    instance: str
    network: str = "host"
    pull: str = "never"
    timeout: int = 3600  # seconds per step

    async def stage_in(self, run: JobRun, job: JobDir, name: str) -> dict[str, str]:
        """Fetch the inputs into ``job.inputs`` (afresh) and return the env-file values."""
        manifest = StageInManifest(
            inputs=[
                InputEntry(
                    slot=i.slot, kind=str(i.kind), path=i.path, key=i.key, size=i.size, sha256=i.sha256
                )
                for i in run.inputs
            ]
        )
        await asyncio.to_thread(job.clear_inputs)  # a re-run after a restart starts afresh
        await asyncio.to_thread((job.root / STAGE_IN_MANIFEST).write_text, manifest.model_dump_json())
        code, err = await self._step("stage-in", run, job, name, STAGE_IN_MANIFEST)
        if code != 0:
            raise InputStagingError(err)
        return await asyncio.to_thread(env_input_values, run, job.inputs)

    async def stage_out(
        self, run: JobRun, job: JobDir, name: str, manifest: StageOutManifest
    ) -> OutputManifest:
        """Upload what ``manifest`` lists (paths as on the host) and return the output manifest."""
        inside = manifest.model_copy(
            update={
                "log_path": _inside(job, manifest.log_path),
                "result_path": _inside(job, manifest.result_path),
            }
        )
        await asyncio.to_thread(job.output_manifest.unlink, missing_ok=True)  # left by an earlier try
        await asyncio.to_thread((job.root / STAGE_OUT_MANIFEST).write_text, inside.model_dump_json())
        code, err = await self._step("stage-out", run, job, name, STAGE_OUT_MANIFEST)
        if code not in (0, EXIT_OUTPUT_MISSING):
            raise OutputUploadError(err)
        try:
            text = await asyncio.to_thread(job.output_manifest.read_text)
            return OutputManifest.model_validate_json(text)
        except (OSError, ValidationError) as e:
            raise OutputUploadError(f"the side-car wrote no readable output manifest: {e}") from e

    async def remove(self, name: str) -> None:
        """Remove both steps' containers of the job whose worker is ``name`` (missing ones are fine)."""
        for step in ("stage-in", "stage-out"):
            await self.engine.remove(f"{name}.{step}")

    async def _step(self, step: str, run: JobRun, job: JobDir, name: str, manifest: str) -> tuple[int, str]:
        """Run one step to its end, bounded by :attr:`timeout`; its exit code and error message."""
        await self.engine.remove(f"{name}.{step}")  # a leftover of a try cut short by a restart
        args = sidecar_args(
            step,
            image=self.image,
            name=name,
            instance=self.instance,
            job_id=run.job_id,
            job_root=str(job.root),
            manifest=manifest,
            storage_env=self.storage.names(),
            storage_root=self.storage.root,
            pull=self.pull,
            network=self.network,
        )
        log.info("container_sidecar_started", job_id=run.job_id, step=step)
        try:
            async with asyncio.timeout(self.timeout):
                code, _, err = await self.engine.run(*args, check=False, env=self.storage.cli_env())
        except TimeoutError:
            await self.engine.remove(f"{name}.{step}")
            return -1, f"the side-car's {step} ran longer than its {self.timeout} s timeout"
        except asyncio.CancelledError:
            await asyncio.shield(self.engine.remove(f"{name}.{step}"))  # canceled: stop the step too
            raise
        log.info("container_sidecar_finished", job_id=run.job_id, step=step, exit_code=code)
        return code, _error_of(err, code)


def _inside(job: JobDir, path: str | None) -> str | None:
    """A path in the job directory as the side-car container sees it."""
    if path is None:
        return None
    relative = str(path).removeprefix(str(job.root)).lstrip("/")
    return f"{SIDECAR_JOB_MOUNT}/{relative}"


def _error_of(stderr: str, code: int) -> str:
    """The side-car's own error message (its last JSON log line's ``error``), else the end of stderr."""
    for line in reversed(stderr.strip().splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("error"):
            return str(entry["error"])
    return stderr.strip()[-500:] or f"the side-car exited with {code}"
