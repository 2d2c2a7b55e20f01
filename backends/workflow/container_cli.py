"""The podman command line, as the container backend uses it: argument building and subprocess calls.

Every call is an ``asyncio`` subprocess of the engine binary (``podman``) with ``CONTAINERS_CONF`` set when
the backend was configured with a containers.conf. Nothing here knows about jobs' life cycles; see
:mod:`backends.workflow.container`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backends.workflow.base import JobRun, WorkflowBackendError

MANAGED_BY = "app.kubernetes.io/managed-by=workflow-middlelayer"
INSTANCE_LABEL = "wml/instance"
INPUTS_MOUNT = "/wml/inputs"
OUTPUTS_MOUNT = "/wml/outputs"


@dataclass(frozen=True, slots=True)
class ContainerState:
    """The part of ``podman inspect``/``podman ps`` the backend needs."""

    running: bool
    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True, slots=True)
class Engine:
    """One container engine binary and its configuration."""

    binary: str = "podman"
    conf: str | None = None  # containers.conf, passed as CONTAINERS_CONF

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.conf:
            env["CONTAINERS_CONF"] = self.conf
        return env

    async def run(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        """Run ``<engine> args`` to its end; with ``check`` a non-zero exit raises WorkflowBackendError."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
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
        code, out, _ = await self.run("container", "inspect", "--format", "json", name, check=False)
        if code != 0:
            return None
        try:
            state = json.loads(out)[0]["State"]
        except (json.JSONDecodeError, LookupError, TypeError):
            return None
        running = state.get("Status") in {"running", "created", "configured", "initialized", "paused"}
        return ContainerState(running, None if running else int(state["ExitCode"]), bool(state["OOMKilled"]))

    async def managed(self, instance: str) -> dict[str, bool]:
        """Every container of this backend instance (``podman ps -a`` by label): name -> running."""
        _, out, _ = await self.run(
            "ps", "-a", "--format", "json", "--filter", f"label={MANAGED_BY}",
            "--filter", f"label={INSTANCE_LABEL}={instance}",
        )  # fmt: skip
        found: dict[str, bool] = {}
        for entry in json.loads(out or "[]"):
            for name in entry.get("Names") or ():
                found[name] = entry.get("State") == "running"
        return found


def run_args(
    run: JobRun,
    *,
    name: str,
    instance: str,
    env: Mapping[str, str],
    inputs: str,
    outputs: str,
    user: str | None,
    ulimits: Sequence[str],
    network: str,
) -> list[str]:
    """The ``podman run`` arguments for the worker of ``run`` (detached, never pulling)."""
    mem = str(run.resources.memory)
    args = [
        "run", "--detach", "--pull=never", "--name", name, f"--network={network}",
        "--cpus", f"{run.resources.cpu:g}", "--memory", mem, "--memory-swap", mem,
        "--volume", f"{inputs}:{INPUTS_MOUNT}:ro", "--volume", f"{outputs}:{OUTPUTS_MOUNT}:rw",
        "--label", MANAGED_BY, "--label", f"{INSTANCE_LABEL}={instance}",
        "--label", f"wml/job-id={run.job_id}", "--label", f"wml/consumer-id={run.consumer_id}",
        "--label", f"wml/asset-id={run.asset_id}",
    ]  # fmt: skip
    for key, value in run.labels.items():
        args += ["--label", f"{key}={value}"]
    if user:
        args += ["--user", user]
    for limit in ulimits:
        args += ["--ulimit", limit]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    if run.command:
        args += ["--entrypoint", json.dumps(list(run.command))]
    args.append(run.image)
    args += list(run.args or ())
    return args


def container_env(run: JobRun, dotenv: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment inside the container: run env, env-file inputs, then the slot paths."""
    env: dict[str, Any] = dict(run.env)
    env.update({k: v for k, v in dotenv.items() if not k.startswith(("WML_", "LD_")) and k != "PATH"})
    env["WML_INPUTS_DIR"] = INPUTS_MOUNT
    env["WML_OUTPUTS_DIR"] = OUTPUTS_MOUNT
    for staged in run.inputs:
        env[f"WML_INPUT_{staged.slot.upper()}"] = f"{INPUTS_MOUNT}/{staged.path}"
    for output in run.outputs:
        env[f"WML_OUTPUT_{output.name.upper()}"] = f"{OUTPUTS_MOUNT}/{output.path}"
    return {k: str(v) for k, v in env.items() if "\0" not in str(v) and "=" not in k}
