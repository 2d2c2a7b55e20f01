"""The podman and docker command lines, as the container backend uses them: arguments and subprocess calls.

Every call is an ``asyncio`` subprocess of the engine binary (``podman`` or ``docker``), with
``CONTAINERS_CONF`` set when podman was configured with a containers.conf and ``DOCKER_HOST`` when docker was
given a socket. The CLI gets only the variables an engine reads (:data:`ENGINE_ENV`), never the server's own
(WML_*, AWS_* keys, database URLs); a worker's environment goes through an env file (:func:`write_env_file`),
never the command line. The two CLIs differ in a few places, handled here: docker's ``--entrypoint`` takes one
executable (not podman's JSON list), ``docker rm`` has no ``--time``, and ``docker inspect`` prefixes names
with ``/``. Both print the same ``State`` fields (``Status``, ``ExitCode``, ``OOMKilled``). Nothing here knows
about jobs' life cycles; see :mod:`backends.workflow.host.container.backend`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from backends.workflow.base import JobRun, Resources, WorkflowBackendError

MANAGED_BY = "app.kubernetes.io/managed-by=workflow-middlelayer"
INSTANCE_LABEL = "wml/instance"
INPUTS_MOUNT = "/wml/inputs"
OUTPUTS_MOUNT = "/wml/outputs"
# What of the server's environment the engine CLI gets: what podman and docker themselves read.
ENGINE_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"})
ENGINE_ENV_PREFIXES = ("XDG_", "CONTAINERS_", "DOCKER_", "REGISTRY_AUTH_FILE", "LC_")


class GpuUnavailableError(WorkflowBackendError):
    """The run asks for GPUs (or a GPU type) this container backend was not configured with."""


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The part of ``inspect`` the backend needs."""

    running: bool
    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class Engine:
    """One container engine binary and its configuration."""

    binary: str = "podman"
    conf: str | None = None  # podman: containers.conf, passed as CONTAINERS_CONF
    host: str | None = None  # docker: the engine's socket, passed as DOCKER_HOST
    # The CLI's working directory. podman's conmon writes files (e.g. an empty ``oom`` after an OOM
    # kill) into the directory it inherits, so never leave it at whatever ours happens to be.
    cwd: str | None = None

    @property
    def docker(self) -> bool:
        return PurePath(self.binary).name == "docker"

    def _env(self) -> dict[str, str]:
        """The CLI's own environment: what an engine reads of ours (PATH, HOME, XDG_*, CONTAINERS_*, ...),
        plus what we were configured with; nothing else of the server's."""
        env = {k: v for k, v in os.environ.items() if k in ENGINE_ENV or k.startswith(ENGINE_ENV_PREFIXES)}
        if self.conf:
            env["CONTAINERS_CONF"] = self.conf
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    async def run(
        self, *args: str, check: bool = True, env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Run ``<engine> args`` to its end; with ``check`` a non-zero exit raises WorkflowBackendError.

        ``env``: more variables for the CLI's own environment (values that ``--env NAME`` copies into a
        container, so they never appear on its command line).
        """
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**self._env(), **(env or {})},
                cwd=self.cwd,
            )
        except OSError as e:
            raise WorkflowBackendError(f"cannot run {self.binary}: {e.strerror}") from e
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()  # e.g. a `podman wait` cut short by a timeout or by close()
            await proc.wait()
            raise
        code = proc.returncode if proc.returncode is not None else -1
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        if check and code != 0:
            raise WorkflowBackendError(f"{self.binary} {args[0]} failed: {stderr.strip()[-500:]}")
        return code, stdout, stderr

    async def stream(self, *args: str) -> AsyncIterator[bytes]:
        """The stdout of ``<engine> args`` line by line (stderr merged), killing the process if left early."""
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._env(),
            cwd=self.cwd,
            limit=1024 * 1024,
        )
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                yield line
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def inspect(self, name: str) -> ContainerState | None:
        """The state of container ``name``, or None when it does not exist."""
        code, out, _ = await self.run("container", "inspect", name, check=False)
        if code != 0:
            return None
        try:
            return _state(json.loads(out)[0])
        except (json.JSONDecodeError, LookupError, TypeError, ValueError):
            return None

    async def managed(self, instance: str) -> dict[str, bool]:
        """Every container of this backend instance (listed by label): name -> running."""
        _, out, _ = await self.run(
            "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={MANAGED_BY}",
            "--filter", f"label={INSTANCE_LABEL}={instance}",
        )  # fmt: skip
        names = out.split()
        if not names:
            return {}
        # One inspect for all: its State is the same on both engines (ps prints it differently).
        _, out, err = await self.run("container", "inspect", *names, check=False)
        try:
            entries = json.loads(out or "[]")
            return {e["Name"].lstrip("/"): _state(e).running for e in entries}
        except (json.JSONDecodeError, LookupError, TypeError, ValueError) as e:
            raise WorkflowBackendError(f"{self.binary} inspect failed: {err.strip()[-500:]}") from e

    async def stop(self, name: str, grace: int) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; a missing container is not an error."""
        await self.run("stop", "-t", str(grace), name, check=False)

    async def remove(self, name: str) -> None:
        """Kill (at once) and remove ``name``; a missing container is not an error."""
        await self.run("rm", "--force", *([] if self.docker else ["--time", "0"]), name, check=False)


def _state(info: dict[str, Any]) -> ContainerState:
    state = info["State"]
    running = state.get("Status") in {"running", "created", "configured", "initialized", "paused"}
    return ContainerState(running, None if running else int(state["ExitCode"]), bool(state["OOMKilled"]))


def run_args(
    run: JobRun,
    *,
    name: str,
    instance: str,
    env_file: str,
    inputs: str,
    outputs: str,
    user: str | None,
    ulimits: Sequence[str],
    network: str,
    pull: str = "never",
    devices: Sequence[str] = (),
    docker: bool = False,
    pids_limit: int = 1024,
    tmp_size: str = "1g",
) -> list[str]:
    """The ``run`` arguments for the worker of ``run`` (detached; ``devices`` from :func:`gpu_args`;
    ``env_file`` from :func:`write_env_file`): no capabilities, no new privileges, a pids limit, the root
    file system read-only with a tmpfs ``/tmp`` of ``tmp_size``."""
    mem = str(run.resources.memory)
    args = [
        "run", "--detach", f"--pull={pull}", "--name", name, f"--network={network}",
        "--cpus", f"{run.resources.cpu:g}", "--memory", mem, "--memory-swap", mem,
        "--cap-drop=all", "--security-opt=no-new-privileges", f"--pids-limit={pids_limit}",
        "--read-only", "--tmpfs", f"/tmp:rw,nosuid,nodev,size={tmp_size},mode=1777",  # noqa: S108
        "--volume", f"{inputs}:{INPUTS_MOUNT}:ro", "--volume", f"{outputs}:{outputs_mount(run)}:rw",
        "--env-file", env_file,
        "--label", MANAGED_BY, "--label", f"{INSTANCE_LABEL}={instance}",
        "--label", f"wml/job-id={run.job_id}", "--label", f"wml/consumer-id={run.consumer_id}",
        "--label", f"wml/asset-id={run.asset_id}",
    ]  # fmt: skip
    for staged in run.inputs:
        if staged.worker_path:  # placed by the asset: the staged file or directory, mounted there alone
            args += ["--volume", f"{inputs}/{staged.path}:{staged.worker_path}:ro"]
    for key, value in run.labels.items():
        args += ["--label", f"{key}={value}"]
    if user:
        args += ["--user", user]
    for limit in ulimits:
        args += ["--ulimit", limit]
    args += devices
    command, rest = list(run.command or ()), list(run.args or ())
    if command and docker:  # docker's --entrypoint is one executable: the rest goes before the args
        args += ["--entrypoint", command[0], run.image, *command[1:], *rest]
        return args
    if command:
        args += ["--entrypoint", json.dumps(command)]
    return [*args, run.image, *rest]


def write_env_file(path: str, env: Mapping[str, str]) -> None:
    """Write the worker's environment as an env file (``KEY=VALUE`` lines, created 0600) for
    ``--env-file``. A value with a line break cannot be written so: ValueError naming its key."""
    broken = sorted(k for k, v in env.items() if "\n" in v or "\r" in v)
    if broken:
        raise ValueError(
            f"the container backend passes the environment through an env file, which cannot hold a line "
            f"break: the value of {', '.join(broken)} has one"
        )
    text = "".join(f"{key}={value}\n" for key, value in env.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def gpu_args(resources: Resources, *, gpus: Sequence[str], gpu_type: str | None) -> list[str]:
    """The flags giving a run its GPUs: CDI ``--device`` names, or docker's ``--gpus N``.

    ``gpus`` is what the host offers (CDI device names, ``<vendor>/gpu=all``, or ``["docker"]``); a run
    asking for more than that, or for a gpuType other than ``gpu_type``, raises GpuUnavailableError rather
    than running without them. Devices are not shared out between concurrent runs: each gets the first N.
    """
    wanted = resources.gpu
    if wanted <= 0:
        return []
    if not gpus:
        raise GpuUnavailableError(f"the run asks for {wanted} GPU(s) and this host's backend offers none")
    if resources.gpu_type and resources.gpu_type != gpu_type:
        offered = f"only {gpu_type!r}" if gpu_type else "no declared type"
        asked = resources.gpu_type
        raise GpuUnavailableError(f"the run asks for GPU type {asked!r}; this host has {offered}")
    if list(gpus) == ["docker"]:
        return ["--gpus", str(wanted)]
    if len(gpus) == 1 and gpus[0].endswith("=all"):
        return ["--device", gpus[0]]
    if wanted > len(gpus):
        raise GpuUnavailableError(f"the run asks for {wanted} GPU(s); this host offers {len(gpus)}")
    return [flag for device in gpus[:wanted] for flag in ("--device", device)]


def container_env(run: JobRun, dotenv: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment inside the container: env-file inputs (only the keys their slots accept,
    checked at stage-in), the run's env over them (never overridden by a file), then the slot paths."""
    env: dict[str, Any] = {**dotenv, **run.env}
    env["WML_INPUTS_DIR"] = INPUTS_MOUNT
    env["WML_OUTPUTS_DIR"] = outputs_mount(run)
    for staged in run.inputs:
        env[f"WML_INPUT_{staged.slot.upper()}"] = staged.worker_path or f"{INPUTS_MOUNT}/{staged.path}"
    for output in run.outputs:
        env[f"WML_OUTPUT_{output.name.upper()}"] = f"{outputs_mount(run)}/{output.path}"
    return {k: str(v) for k, v in env.items() if "\0" not in str(v) and "=" not in k}


def outputs_mount(run: JobRun) -> str:
    """Where the worker writes its outputs: the asset's output directory, or :data:`OUTPUTS_MOUNT`."""
    return run.output_dir or OUTPUTS_MOUNT


SIDECAR_JOB_MOUNT = "/wml/job"  # the job directory, as a side-car container sees it
SIDECAR_STEPS = ("stage-in", "stage-out")


def sidecar_args(
    step: str,
    *,
    image: str,
    name: str,
    instance: str,
    job_id: str,
    mounts: Sequence[tuple[str, str, str]],
    manifest: str,
    storage_env: Sequence[str],
    pull: str = "never",
    user: str | None = None,
    network: str | None = None,
    memory: str = "1g",
    pids_limit: int = 1024,
) -> list[str]:
    """The ``run`` arguments of one side-car step (``wml sidecar stage-in|stage-out``) as a container.

    ``mounts`` are (host path, container path, ``rw``|``ro``): parts of the job directory, under
    :data:`SIDECAR_JOB_MOUNT`; ``manifest`` is a path relative to it, written with paths as the container
    sees them. The storage settings are passed by name only (``--env
    NAME``: the CLI copies the value from its own environment), so no credential appears in a command
    line. ``network`` None: the engine's default. The name gets ``.<step>`` so the orphan sweep knows the
    job it belongs to. ``user``: the job's user (who owns its directory); None: root inside the container,
    with every capability but ``DAC_OVERRIDE`` dropped. The root file system is read-only, memory and
    processes are limited. See :mod:`backends.workflow.host.container.sidecar`.
    """
    if step not in SIDECAR_STEPS:
        raise ValueError(f"unknown side-car step {step!r}")
    root = "inputs" if step == "stage-in" else "outputs"
    args = [
        "run", "--rm", f"--pull={pull}", "--name", f"{name}.{step}",
        "--label", MANAGED_BY, "--label", f"{INSTANCE_LABEL}={instance}",
        "--label", f"wml/job-id={job_id}", "--label", f"wml/step={step}",
        "--memory", memory, "--memory-swap", memory, f"--pids-limit={pids_limit}",
        "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777",  # noqa: S108
    ]  # fmt: skip
    for host, inside, mode in mounts:
        args += ["--volume", f"{host}:{inside}:{mode}"]
    if network:
        args.append(f"--network={network}")
    args += ["--user", user or "0:0", "--cap-drop=all", "--security-opt=no-new-privileges"]
    if not user:
        args.append("--cap-add=DAC_OVERRIDE")
    for env_name in storage_env:
        args += ["--env", env_name]
    args += [image, step, "--manifest", f"{SIDECAR_JOB_MOUNT}/{manifest}"]
    return [*args, "--root", f"{SIDECAR_JOB_MOUNT}/{root}"]
