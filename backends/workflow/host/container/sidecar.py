"""The container backend's side-car-image mode: stage-in and stage-out as containers of the side-car image.

Like the Kubernetes pod, a job then runs as three containers in turn: ``wml sidecar stage-in`` (into the
job directory's ``inputs``), the worker, and ``wml sidecar stage-out`` (only the log when canceled). Each
side-car step runs in the foreground (``run --rm``), named ``wml-<instance>-<job id>.<step>`` and labelled
like the worker, so the orphan sweep knows whose it is; a leftover of an earlier try (a server restart
in the middle of a step) is removed before the step runs again.

A step sees only its own job's files: ``inputs`` (writable for stage-in, read-only for stage-out),
``outputs`` and the worker's log (read-only, stage-out), and the job's ``sidecar/`` directory (its
manifest, the output manifest it writes, and for ``file://`` storage its store), each mounted under
``/wml/job``. With ``file://`` storage the step never sees the file store: stage-in reads the job's inputs
from ``sidecar/store`` (hard links made by the server, copies across file systems), stage-out writes there
and the server moves what it uploaded into the real storage; the step then needs no network at all. With
S3 the storage settings (``WML_STORAGE`` and the S3 keys) go into the engine CLI's own environment and are
passed by name only (``--env NAME``), so no secret appears on a command line.

The step runs as the job's user (:meth:`ContainerOptions.user_for`; who owns those directories), with no
capabilities, no new privileges, a read-only root, memory and process limits, and off the host's network.
With ``user=`` (the image's own user) it runs as root inside its container with every capability dropped
but ``DAC_OVERRIDE``.

Exit codes of ``wml sidecar`` (see :mod:`sidecar.main`) map onto the same errors as the in-process path:
a failed stage-in raises :class:`~sidecar.errors.InputStagingError`, a failed stage-out
:class:`~sidecar.errors.OutputUploadError` (exit 4, a required output missing, is not a failure here: the
output manifest says what is missing and the outcome table decides).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog
from pydantic import ValidationError

from backends.storage.base import StorageBackend
from backends.workflow.base import JobRun
from backends.workflow.host.container.cli import SIDECAR_JOB_MOUNT, Engine, sidecar_args
from backends.workflow.host.jobdir import JobDir
from backends.workflow.host.jobs import env_input_values
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.manifest import InputEntry, OutputManifest, StageInManifest, StageOutManifest
from sidecar.staging import file_chunks

log = structlog.get_logger("wml.workflow.container")

SIDECAR_DIR = "sidecar"  # in the job directory: the steps' own (manifests, output manifest, file store)
STAGE_IN_MANIFEST = "stage-in.json"  # in SIDECAR_DIR
STAGE_OUT_MANIFEST = "stage-out.json"
OUTPUT_MANIFEST = "output-manifest.json"
STORE = "store"  # in SIDECAR_DIR: the job's objects, for file:// storage
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
        """A ``file://`` storage's directory (never mounted: the job's objects go through its store), else
        None."""
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
    files: StorageBackend | None = None  # the real storage, for file:// (outputs are moved into it)
    network: str | None = None  # None: none for file:// storage, else the engine's default
    pull: str = "never"
    timeout: int = 3600  # seconds per step
    memory: str = "1g"
    pids_limit: int = 1024

    async def stage_in(self, run: JobRun, job: JobDir, name: str, user: str | None) -> dict[str, str]:
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
        await asyncio.to_thread(_give, job.inputs, user, 0o777)  # the step writes them as the job's user
        work = await asyncio.to_thread(_fresh_dir, job, user)
        if self.storage.root is not None:
            await asyncio.to_thread(_link_inputs, Path(self.storage.root), work / STORE, run)
        await asyncio.to_thread((work / STAGE_IN_MANIFEST).write_text, manifest.model_dump_json())
        mounts = [(job.inputs, "rw"), (work, "rw")]
        code, err = await self._step("stage-in", run, name, user, mounts, STAGE_IN_MANIFEST)
        if code != 0:
            raise InputStagingError(err)
        return await asyncio.to_thread(env_input_values, run, job.inputs)

    async def stage_out(
        self, run: JobRun, job: JobDir, name: str, manifest: StageOutManifest, user: str | None
    ) -> OutputManifest:
        """Upload what ``manifest`` lists (paths as on the host) and return the output manifest."""
        work = await asyncio.to_thread(_fresh_dir, job, user)
        result = work / OUTPUT_MANIFEST
        inside = manifest.model_copy(
            update={
                "log_path": _inside(job, manifest.log_path),
                "result_path": _inside(job, str(result)),
            }
        )
        await asyncio.to_thread((work / STAGE_OUT_MANIFEST).write_text, inside.model_dump_json())
        mounts: list[tuple[Path, str]] = [(job.outputs, "ro"), (work, "rw")]
        if manifest.log_path:
            await asyncio.to_thread(_give, Path(manifest.log_path), user, 0o644)
            mounts.append((Path(manifest.log_path), "ro"))
        code, err = await self._step("stage-out", run, name, user, mounts, STAGE_OUT_MANIFEST)
        if code not in (0, EXIT_OUTPUT_MISSING):
            raise OutputUploadError(err)
        try:
            text = await asyncio.to_thread(result.read_text)
            uploaded = OutputManifest.model_validate_json(text)
        except (OSError, ValidationError) as e:
            raise OutputUploadError(f"the side-car wrote no readable output manifest: {e}") from e
        if self.storage.root is not None:
            await self._move_into_storage(work / STORE, uploaded)
        return uploaded

    async def remove(self, name: str) -> None:
        """Remove both steps' containers of the job whose worker is ``name`` (missing ones are fine)."""
        for step in ("stage-in", "stage-out"):
            await self.engine.remove(f"{name}.{step}")

    async def _move_into_storage(self, store: Path, uploaded: OutputManifest) -> None:
        """What stage-out wrote into the job's store, into the real storage, checked against its record."""
        if self.files is None:
            raise OutputUploadError("the side-car's file store has no storage to be moved into")
        for record in [*uploaded.outputs, *([uploaded.log] if uploaded.log else [])]:
            path = store / record.key
            if not await asyncio.to_thread(_inside_store, store, path):
                raise OutputUploadError(f"output {record.name!r}: the side-car named a key outside its store")
            info = await self.files.put(record.key, file_chunks(path))
            if info.size != record.size or (info.sha256 and info.sha256 != record.sha256):
                await self.files.delete(record.key)
                raise OutputUploadError(
                    f"output {record.name!r}: the stored bytes differ from the side-car's"
                )
            await asyncio.to_thread(path.unlink)

    async def _step(
        self,
        step: str,
        run: JobRun,
        name: str,
        user: str | None,
        mounts: list[tuple[Path, str]],
        manifest: str,
    ) -> tuple[int, str]:
        """Run one step to its end, bounded by :attr:`timeout`; its exit code and error message."""
        await self.engine.remove(f"{name}.{step}")  # a leftover of a try cut short by a restart
        local = self.storage.root is not None
        args = sidecar_args(
            step,
            image=self.image,
            name=name,
            instance=self.instance,
            job_id=run.job_id,
            mounts=[(str(path), f"{SIDECAR_JOB_MOUNT}/{path.name}", mode) for path, mode in mounts],
            manifest=f"{SIDECAR_DIR}/{manifest}",
            storage_env=["WML_STORAGE"] if local else self.storage.names(),
            pull=self.pull,
            user=user,
            network=self.network or ("none" if local else None),
            memory=self.memory,
            pids_limit=self.pids_limit,
        )
        env = {"WML_STORAGE": f"file://{SIDECAR_JOB_MOUNT}/{SIDECAR_DIR}/{STORE}"} if local else None
        log.info("container_sidecar_started", job_id=run.job_id, step=step)
        try:
            async with asyncio.timeout(self.timeout):
                code, _, err = await self.engine.run(*args, check=False, env=env or self.storage.cli_env())
        except TimeoutError:
            await self.engine.remove(f"{name}.{step}")
            return -1, f"the side-car's {step} ran longer than its {self.timeout} s timeout"
        except asyncio.CancelledError:
            await asyncio.shield(self.engine.remove(f"{name}.{step}"))  # canceled: stop the step too
            raise
        log.info("container_sidecar_finished", job_id=run.job_id, step=step, exit_code=code)
        return code, _error_of(err, code)


def _numeric(user: str | None) -> tuple[int, int] | None:
    """``user``'s uid and gid when the server (root) can give it files; None otherwise."""
    uid, _, gid = (user or "").partition(":")
    if os.geteuid() == 0 and uid.isdigit() and (gid or uid).isdigit():
        return int(uid), int(gid or uid)
    return None


def _fresh_dir(job: JobDir, user: str | None) -> Path:
    """The job's ``sidecar/`` directory, empty, the step's user's (or open to it when we cannot chown)."""
    work = job.root / SIDECAR_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    _give(work, user, 0o777)
    return work


def _give(path: Path, user: str | None, mode: int) -> None:
    """``path`` to the step's user: owned by it, or (when we cannot chown) opened up to ``mode``."""
    owner = _numeric(user)
    if owner is not None:
        os.chown(path, *owner)
    elif user:
        os.chmod(path, mode)


def _link_inputs(root: Path, store: Path, run: JobRun) -> None:
    """Each input object of ``run`` into the job's store at its key: a hard link, a copy across file systems.
    Made readable by all (the store's directories are the server's; the object's other name lives in the
    private data directory)."""
    store.mkdir(exist_ok=True)
    for staged in run.inputs:
        source, target = root / staged.key, store / staged.key
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        os.chmod(target, 0o644)
    for directory in (store, *[p for p in store.rglob("*") if p.is_dir()]):
        os.chmod(directory, 0o755)  # noqa: S103 - the job's private store: its step reads it


def _inside_store(store: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(store.resolve()) and path.is_file() and not path.is_symlink()


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
