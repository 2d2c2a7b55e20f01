"""The detached runner of one local job: starts the worker, enforces its limits, records how it ended.

The local workflow backend spawns ``python -m backends.workflow.local_runner <job dir>`` as the leader of a
new session, so the runner and the worker (in the runner's process group) outlive a restart of the
server. Everything the runner needs is in ``<job dir>/launch.json``; everything it reports is a file in
the job directory, because after a restart nobody is waiting on it as a child:

- ``runner.pid`` and ``worker.pid``: written as soon as each process exists;
- ``worker.log``: the worker's stdout and stderr, appended;
- ``exit.json``: written atomically once the worker and everything left in its process group are gone:
  ``{"exit_code", "signal", "timed_out", "terminated", "oom", "error"}``.

A SIGTERM to the group (cancel) reaches the worker directly; the runner notes it and, after the grace
period, SIGKILLs what is left, like it does when the run timeout passes. It never signals itself. The
runner is the job's subreaper: processes orphaned inside the worker's tree are reaped by it, and when the
worker exits everything it left behind is killed and reaped before exit.json is written.

This module uses only the standard library and imports nothing from the project, so it starts fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

LAUNCH_FILE = "launch.json"
EXIT_FILE = "exit.json"
RUNNER_PID_FILE = "runner.pid"
WORKER_PID_FILE = "worker.pid"
WORKER_LOG_FILE = "worker.log"

_POLL = 0.05
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def process_identity(pid: int) -> str:
    """``"<pid> <start time>"``: the start time (field 22 of /proc/<pid>/stat) tells a reused pid apart."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return f"{pid} {stat[stat.rfind(')') + 2 :].split()[19]}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old content or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _lower_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Set a resource limit, never above the hard limit we already have (raising it would fail)."""
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def _apply_limits(limits: dict[str, Any]) -> None:
    """Runs in the worker child between fork and exec."""
    memory = int(limits.get("memory") or 0)
    if memory > 0:
        _lower_limit(resource.RLIMIT_AS, memory)
    cpu_seconds = limits.get("cpu_seconds")
    if cpu_seconds:
        # A backstop only: the wall-clock timeout normally ends the run first. SIGXCPU, then SIGKILL.
        soft = max(1, math.ceil(float(cpu_seconds)))
        _lower_limit(resource.RLIMIT_CPU, soft, soft + 5)
    _lower_limit(resource.RLIMIT_NOFILE, int(limits.get("nofile", 1024)))


def _become_subreaper() -> None:
    """Orphans of the worker's tree become our children (not init's), so we can kill and reap them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _job_processes() -> list[int]:
    """Every other live process of the job: our process group, and orphans we adopted as subreaper."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...; zombies are dead already and only wait to be reaped.
        state, ppid, pgrp = stat[stat.rfind(")") + 2 :].split()[:3]
        if state != "Z" and (int(pgrp) == group or int(ppid) == me):
            members.append(int(entry))
    return members


def _signal_group(sig: int) -> None:
    for pid in _job_processes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap_orphans(worker: int) -> None:
    """Collect adopted orphans that exited; never the worker, whose status Popen collects."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == worker:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def _reap_all(timeout: float) -> None:
    """After the final SIGKILL: collect every remaining child, so the job's process group is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)


class _Supervisor:
    """Waits for the worker while enforcing the run timeout and a requested termination."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.grace = 5.0
        self.timed_out = False
        self.terminated = False
        self.killed = False
        self.kill_at = math.inf

    def configure(self, timeout: float, grace: float) -> None:
        """The run timeout (0: none) counts from now."""
        self.deadline = time.monotonic() + timeout if timeout > 0 else math.inf
        self.grace = grace

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # The worker got the same signal (same group); give it the grace period, then kill.
        # (A handler, not SIG_IGN: a handler is reset by exec, so the worker keeps the default.)
        if not self.terminated:
            self.terminated = True
            self.kill_at = min(self.kill_at, time.monotonic() + self.grace)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return proc.wait(timeout=_POLL)
            except subprocess.TimeoutExpired:
                _reap_orphans(proc.pid)
            now = time.monotonic()
            if now >= self.deadline and not self.timed_out:
                self.timed_out = True
                _signal_group(signal.SIGTERM)
                self.kill_at = min(self.kill_at, now + self.grace)
            if now >= self.kill_at and not self.killed:
                self.killed = True
                _signal_group(signal.SIGKILL)


def _start(job_dir: Path, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    with open(job_dir / WORKER_LOG_FILE, "ab") as log:
        try:
            return subprocess.Popen(
                spec["argv"],
                cwd=job_dir,
                env=spec["env"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: _apply_limits(spec.get("limits", {})),  # the runner has one thread
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.write(f"wml: cannot start the worker: {e}\n".encode())
            raise


def _run(job_dir: Path, spec: dict[str, Any], sup: _Supervisor) -> dict[str, Any]:
    if sup.terminated:
        return {"terminated": True}
    try:
        proc = _start(job_dir, spec)
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"cannot start the worker: {e}"}
    write_atomic(job_dir / WORKER_PID_FILE, str(proc.pid))
    code = sup.wait(proc)
    # What the worker left behind dies with it, as in a container.
    _signal_group(signal.SIGKILL)
    _reap_all(timeout=2.0)
    sig = -code if code < 0 else None
    return {
        "exit_code": None if sig else code,
        "signal": sig,
        "timed_out": sup.timed_out,
        "terminated": sup.terminated,
        # Best effort: a SIGKILL nobody here sent is most likely the kernel's OOM killer.
        "oom": sig == signal.SIGKILL and not sup.killed,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m backends.workflow.local_runner <job dir>", file=sys.stderr)
        return 2
    job_dir = Path(argv[1]).resolve()
    sup = _Supervisor()  # installed first: a TERM before the worker exists still counts
    signal.signal(signal.SIGTERM, sup.on_sigterm)
    _become_subreaper()
    os.chdir(job_dir)
    write_atomic(job_dir / RUNNER_PID_FILE, process_identity(os.getpid()))
    result: dict[str, Any] = {"exit_code": None, "signal": None, "timed_out": False}
    result |= {"terminated": False, "oom": False, "error": None}
    try:
        spec = json.loads((job_dir / LAUNCH_FILE).read_text(encoding="utf-8"))
        sup.configure(float(spec.get("timeout", 0)), float(spec.get("grace", 5)))
        result |= _run(job_dir, spec, sup)
    except Exception as e:  # the exit file must be written whatever happened
        result["error"] = f"runner failed: {type(e).__name__}: {e}"
    write_atomic(job_dir / EXIT_FILE, json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
