"""The on-disk state of one local job, so that a restarted server can adopt what is still running.

Layout of ``<work dir>/<job id>/`` (mode 0700)::

    run.json              the JobRun, written at submit
    inputs/ outputs/      the slot directories the worker sees
    tmp/                  the worker's scratch directory (its /tmp and HOME in the local sandbox)
    launch.json           what the runner starts (argv, env, limits, timeouts), written after stage-in;
                          the runner gets the same on its stdin
    runner.pid worker.pid written as the processes appear (runner.pid: pid and start time)
    worker.log            the worker's stdout and stderr
    cancel                present once a cancel was asked (its mtime is when)
    exit.json             how the worker ended, written by the runner
    output-manifest.json  written by stage-out as its last act
    final.json            the terminal BackendUpdate, re-emitted by reconcile

Durability: every file is replaced atomically (a reader sees all of it or none), which is all a restart
of the server needs: the page cache outlives the process. Only ``exit.json`` is synced to disk, by the
runner: it is the one record of how the worker ended. The rest can be lost to a power failure as the
database's last commits can (SQLite runs with ``synchronous=NORMAL``), and reconcile still ends every job:
without ``final.json`` it stages out again from ``exit.json`` (the same keys); without ``run.json`` (a job
in stage-in when the power went) the job is reported lost; a pid file names nothing after a reboot.

Cleanup renames the directory to ``<work dir>/.removing-<job id>.<n>`` (the job is gone at once) and
removes it in the background; a backend that starts removes what a previous one left there.

Only plain blocking file and ``/proc`` access lives here; the backend calls it through ``asyncio.to_thread``.
At ~410 lines it is one job directory's whole life (layout, atomic writes, pid checks, the runner's
spawn); cut in two, both halves would share its private path and pid helpers.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from backends.workflow.base import (
    BackendUpdate,
    InputKind,
    JobRun,
    OutputRecord,
    Resources,
    RunPhase,
    StagedInput,
    StagedOutput,
)
from backends.workflow.host.local import runner as local_runner
from backends.workflow.host.local.runner import write_atomic

RUNNER_MODULE = "backends.workflow.host.local.runner"
# The runner runs as a script: isolated (-I: no environment, no user site, no script directory on the path)
# and without site (-S), it needs only the standard library and starts fastest.
RUNNER_SCRIPT = str(Path(local_runner.__file__).resolve())
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Names of job directories moved aside for removal; a job id never starts with a dot.
REMOVING_PREFIX = ".removing-"
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_job_id(ref: str) -> bool:
    """Refs become directory names: only plain names, never a path."""
    return _JOB_ID.fullmatch(ref) is not None and ".." not in ref


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """``exit.json``, as written by the runner."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    terminated: bool = False
    oom: bool = False
    error: str | None = None


class JobDir:
    """Paths and small file operations of one job directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.inputs = root / "inputs"
        self.outputs = root / "outputs"
        self.tmp = root / "tmp"
        self.worker_log = root / local_runner.WORKER_LOG_FILE
        self.output_manifest = root / "output-manifest.json"
        self._run = root / "run.json"
        self._launch = root / local_runner.LAUNCH_FILE
        self._exit = root / local_runner.EXIT_FILE
        self._final = root / "final.json"
        self._cancel = root / "cancel"
        self._runner_pid = root / local_runner.RUNNER_PID_FILE

    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self, run: JobRun) -> None:
        self.root.mkdir(mode=0o700, parents=True)
        self.inputs.mkdir(mode=0o700)
        self.outputs.mkdir(mode=0o700)
        self.tmp.mkdir(mode=0o700)
        self.worker_log.touch(mode=0o600)
        write_atomic(self._run, json.dumps(run_to_json(run)), durable=False)

    def clear_inputs(self) -> None:
        shutil.rmtree(self.inputs, ignore_errors=True)
        self.inputs.mkdir(mode=0o700)

    def read_run(self) -> JobRun | None:
        data = _read_json(self._run)
        return None if data is None else run_from_json(data)

    def launched(self) -> bool:
        return self._launch.exists()

    def write_launch(self, spec: Mapping[str, Any]) -> None:
        write_atomic(self._launch, json.dumps(spec))

    def read_exit(self) -> ExitStatus | None:
        data = _read_json(self._exit)
        return None if data is None else ExitStatus(**data)

    def read_final(self) -> BackendUpdate | None:
        data = _read_json(self._final)
        return None if data is None else update_from_json(data)

    def write_final(self, update: BackendUpdate) -> None:
        write_atomic(self._final, json.dumps(asdict(update)), durable=False)

    def finished(self) -> bool:
        return self._exit.exists() or self._final.exists()

    def request_cancel(self) -> None:
        """Mark the job canceled; the first request's time is kept."""
        if not self._cancel.exists():
            self._cancel.touch(mode=0o600)

    def cancel_requested_at(self) -> float | None:
        try:
            return self._cancel.stat().st_mtime
        except FileNotFoundError:
            return None

    def _runner_identity(self) -> tuple[int, str | None] | None:
        """``runner.pid`` holds the pid and the process's start time (an older file: the pid only)."""
        try:
            fields = self._runner_pid.read_text().split()
            return int(fields[0]), (fields[1] if len(fields) > 1 else None)
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def runner_pid(self) -> int | None:
        identity = self._runner_identity()
        return identity[0] if identity else None

    def write_runner_pid(self, pid: int) -> None:
        write_atomic(self._runner_pid, local_runner.process_identity(pid), durable=False)

    def runner_alive(self) -> bool:
        """Our runner for this job still runs (a reused pid running something else does not count).

        The pid and its start time name one process for good. (The command line is no proof while the
        runner is being exec'd: right after the spawn returns, /proc shows it empty for a moment.)
        """
        identity = self._runner_identity()
        if identity is None:
            return False
        pid, started = identity
        reap(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":
            return False
        if started is not None:
            return fields[19] == started  # field 22 of stat: the start time, in clock ticks since boot
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        runner = RUNNER_MODULE.encode() in cmdline or RUNNER_SCRIPT.encode() in cmdline
        return runner and str(self.root).encode() in cmdline

    def open_runner_pidfd(self) -> int | None:
        """A pidfd of our live runner (readable once it exited), or None: no runner, or no pidfds here.

        Opened before the identity check, so it cannot name a process that reused the pid.
        """
        pid = self.runner_pid()
        if pid is None:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return None
        if not self.runner_alive():
            os.close(pidfd)
            return None
        return pidfd

    def runner_log_tail(self, max_bytes: int = 4096) -> str:
        """The end of the runner's own output (its errors, if it had any)."""
        try:
            with open(self.root / "runner.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int, max_bytes: int = 256 * 1024) -> str:
        """The last ``lines`` lines of the worker log (reading at most ``max_bytes`` from its end)."""
        try:
            with open(self.worker_log, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                data = f.read()
        except FileNotFoundError:
            return ""
        text = data.decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def open_log(self) -> BinaryIO | None:
        """The worker log opened for reading, or None while it does not exist."""
        try:
            return open(self.worker_log, "rb")  # the caller holds it open while following
        except FileNotFoundError:
            return None


def reap(pid: int) -> None:
    """Collect the exit status of a runner we spawned ourselves; no-op for anyone else's process."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_runner_gone(job: JobDir, timeout: float) -> None:
    """After exit.json the runner only has to exit; wait for it (reaping it) so its group is gone."""
    deadline = time.monotonic() + timeout
    while job.runner_alive() and time.monotonic() < deadline:
        time.sleep(0.02)


def signal_runner_group(job: JobDir, sig: signal.Signals) -> None:
    """Signal the runner's process group (the runner is its session and group leader)."""
    pid = job.runner_pid()
    if pid is not None and job.runner_alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def launch(job: JobDir, spec: Mapping[str, Any]) -> int | None:
    """Write launch.json and spawn the runner; None (and nothing started) when a cancel was asked."""
    if job.cancel_requested_at() is not None:
        return None
    write_atomic(job.root / local_runner.LAUNCH_FILE, json.dumps(spec), durable=False)
    return spawn_runner(job, spec)


def detach(job: JobDir) -> JobDir | None:
    """Move the job directory aside (one rename: the job is gone for everyone at once) to be removed
    later by :func:`remove`; the moved directory, or None when there was none."""
    moved = job.root.with_name(f"{REMOVING_PREFIX}{job.root.name}.{time.time_ns()}")
    try:
        os.rename(job.root, moved)
    except FileNotFoundError:
        return None
    return JobDir(moved)


def detached(work_dir: Path) -> list[JobDir]:
    """Job directories moved aside and not yet removed (a restart may have stopped their removal)."""
    try:
        return [JobDir(p) for p in work_dir.iterdir() if p.name.startswith(REMOVING_PREFIX)]
    except FileNotFoundError:
        return []


def remove(job: JobDir, wait: float) -> None:
    """Kill what is left of the job, wait (up to ``wait`` seconds) for its runner and every process of its
    group to go (a killed process may take a moment to leave the kernel: a sandbox setting up its mounts
    on a loaded machine), remove the directory."""
    group = job.runner_pid() if job.runner_alive() else None
    deadline = time.monotonic() + wait
    signal_runner_group(job, signal.SIGKILL)
    wait_runner_gone(job, wait)
    while group is not None and _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(job.root, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    """A process of group ``pgid`` still runs (zombies do not count: they are dead, waiting to be reaped)."""
    with os.scandir("/proc") as entries:  # closed on the early return too (else a ResourceWarning)
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    return False


def spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: int,
    output: str,
    default_signals: Sequence[signal.Signals],
) -> int:
    """Start ``path`` in a new session with ``stdin`` as its stdin, stdout and stderr appended to
    ``output`` (created 0600), ``default_signals`` at their default action and no signal blocked."""
    return os.posix_spawn(
        path,
        list(argv),
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_OPEN, 1, output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
        setsigdef=tuple(default_signals),
        setsigmask=(),
    )


def spawn_runner(job: JobDir, spec: Mapping[str, Any]) -> int:
    """Start the detached runner: a new session, ``spec`` on its stdin (marshal: no json import for the
    runner to pay), its own output to runner.log."""
    argv = [sys.executable, "-I", "-S", RUNNER_SCRIPT, str(job.root)]
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}
    runner_log = str(job.root / "runner.log")
    spec_r, spec_w = os.pipe()  # both ends close-on-exec; the runner gets the read end as its stdin
    try:
        pid = spawn(
            sys.executable,
            argv,
            env,
            stdin=spec_r,
            output=runner_log,
            default_signals=(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE),
        )
    except BaseException:
        os.close(spec_w)
        raise
    finally:
        os.close(spec_r)
    try:
        job.write_runner_pid(pid)
        data = memoryview(marshal.dumps(dict(spec)))
        while data:
            data = data[os.write(spec_w, data) :]
    except BrokenPipeError:
        pass  # a runner that died at once never reads it; its watcher finds out
    finally:
        os.close(spec_w)
    return pid


@dataclass(frozen=True, slots=True)
class WorkerPaths:
    """Where the worker finds its job's directories: the real ones, or their places in the sandbox."""

    inputs: str
    outputs: str
    home: str
    placed: bool = False  # inputs the asset places at absolute paths are there (the sandbox binds them)

    @classmethod
    def of(cls, job: JobDir) -> WorkerPaths:
        return cls(str(job.inputs), str(job.outputs), str(job.root))


def worker_env(run: JobRun, paths: WorkerPaths, dotenv: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: a clean base, the env-file inputs (only the keys their slots accept,
    checked at stage-in), the run's env over them (a file never overrides the asset's env or a
    parameter), then the slot paths."""
    env = {"PATH": DEFAULT_PATH, "HOME": paths.home, "LANG": "C.UTF-8"}
    env.update({k: v for k, v in dotenv.items() if "\0" not in v})
    env.update(run.env)
    env["WML_INPUTS_DIR"] = paths.inputs
    env["WML_OUTPUTS_DIR"] = paths.outputs
    for staged in run.inputs:
        placed = staged.worker_path if paths.placed else None
        env[f"WML_INPUT_{staged.slot.upper()}"] = placed or f"{paths.inputs}/{staged.path}"
    for output in run.outputs:
        env[f"WML_OUTPUT_{output.name.upper()}"] = f"{paths.outputs}/{output.path}"
    return env


def run_to_json(run: JobRun) -> dict[str, Any]:
    data = asdict(run)
    data["env"] = dict(run.env)
    data["labels"] = dict(run.labels)
    return data


def run_from_json(data: dict[str, Any]) -> JobRun:
    return JobRun(
        **{
            **data,
            "resources": Resources(**data["resources"]),
            "inputs": tuple(StagedInput(**{**i, "kind": InputKind(i["kind"])}) for i in data["inputs"]),
            "outputs": tuple(StagedOutput(**o) for o in data["outputs"]),
        }
    )


def update_from_json(data: dict[str, Any]) -> BackendUpdate:
    log = data.get("log")
    return BackendUpdate(
        **{
            **data,
            "phase": RunPhase(data["phase"]),
            "outputs": tuple(OutputRecord(**o) for o in data.get("outputs", ())),
            "log": OutputRecord(**log) if log else None,
        }
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
