"""The detached runner of one local job: starts the worker, enforces its limits, records how it ended.

The local workflow backend spawns ``python -I -S <this file> <job dir>`` as the leader of a new session,
so the runner and the worker (in the runner's process group) outlive a restart of the server. Everything
the runner needs comes on its stdin, :mod:`marshal`-encoded (the same interpreter writes and reads it),
or, when stdin brings nothing, from ``<job dir>/launch.json``, which holds the same spec as JSON in any
case; everything it reports is a file in the job directory, because after a restart nobody is waiting on
it as a child:

- ``runner.pid`` and ``worker.pid``: written as soon as each process exists;
- ``worker.log``: the worker's stdout and stderr, appended; with ``log_max`` in the spec they come through
  a pipe and only the first ``log_max`` bytes are kept (a line says where the rest was dropped);
- ``exit.json``: written atomically once the worker and everything left in its process group are gone:
  ``{"exit_code", "signal", "timed_out", "terminated", "oom", "error"}``. The runner exits right after,
  so its own exit (which the backend waits for through a pidfd) means exit.json is there.

A SIGTERM to the group (cancel) reaches the worker directly; the runner notes it and, after the grace
period, SIGKILLs what is left, like it does when the run timeout passes. It never signals itself. The
runner is the job's subreaper: processes orphaned inside the worker's tree are reaped by it, and when the
worker exits everything it left behind is killed and reaped before exit.json is written.

With ``sandboxed`` in the spec, the argv is the bubblewrap sandbox around the worker
(:mod:`backends.workflow.host.local.sandbox`): it is started with SIGTERM ignored (the worker inside gets
the default back), an exit status of 128 + N means the worker died of signal N, and a failure of the
sandbox's own programs (bwrap, setpriv, env: their one line is all the output) means the worker could not
be started.

This module is on the path of every job's start and end, so it starts fast: it uses only a few standard
library modules (no ``subprocess``, ``pathlib``, ``typing``, ``contextlib``; ``signal`` and ``ctypes`` only
through their C halves ``_signal`` and ``_ctypes``; ``json`` only on a failure's path), imports nothing
from the project, and runs without ``site`` (``-S``). Being a script that imports nothing of ours, it stays
one file, longer than the house's ~400 lines.
Measured against plain ``signal`` and ``ctypes`` in the same run: 36 vs 49 ms of runner and worker CPU per
job (bench/revisions.py, 400 jobs a side).
"""

from __future__ import annotations

import _ctypes
import marshal
import math
import os
import resource
import select
import sys
import time

TYPE_CHECKING = False  # not typing's: importing typing costs the runner's start-up time
if TYPE_CHECKING:
    import signal
else:  # the C module: `signal` would import enum, a third of the runner's start-up time
    import _signal as signal
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

LAUNCH_FILE = "launch.json"
EXIT_FILE = "exit.json"
RUNNER_PID_FILE = "runner.pid"
WORKER_PID_FILE = "worker.pid"
WORKER_LOG_FILE = "worker.log"

_POLL = 0.05  # seconds between looks at the deadlines and the adopted orphans while the worker runs
_READ = 64 * 1024
_READS_PER_LOOK = 16  # the log pump yields to the deadline checks after this many reads
_HEAD = 1024  # bytes of the worker's first output kept to recognise a sandbox that failed to start it
_SANDBOX_PROGRAMS = (b"bwrap", b"setpriv", b"env")  # they name themselves as called: maybe a full path
_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def process_identity(pid: int) -> str:
    """``"<pid> <start time>"``: the start time (field 22 of /proc/<pid>/stat) tells a reused pid apart."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return f"{pid} {stat[stat.rfind(')') + 2 :].split()[19]}"


def write_atomic(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so a reader sees the old content or the new one, never a part.

    ``durable`` also syncs it to disk first; pid files, which mean nothing after a reboot, skip that.
    """
    directory, name = os.path.split(os.fspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
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
    if limits.get("fsize"):
        _lower_limit(resource.RLIMIT_FSIZE, int(limits["fsize"]))
    if limits.get("nproc"):  # counted per real uid: only set where the worker has a uid of its own
        _lower_limit(resource.RLIMIT_NPROC, int(limits["nproc"]))


def _become_subreaper() -> None:
    """Orphans of the worker's tree become our children (not init's), so we can kill and reap them.

    prctl(2) is called through ``_ctypes`` (the C half of :mod:`ctypes`): importing :mod:`ctypes` itself
    costs milliseconds of start-up for every job. ``ctypes`` stays the fallback if that call is missing.
    """
    args = (_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        this_program = _ctypes.dlopen(None)  # type: ignore[arg-type]  # None: dlopen(3)'s NULL
        _ctypes.call_function(_ctypes.dlsym(this_program, "prctl"), args)
        return
    except (OSError, AttributeError):
        pass
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(*args)
    except (OSError, AttributeError):
        pass


def _job_processes() -> list[int]:
    """Every other live process of the job: our process group, and orphans we adopted as subreaper."""
    me, group = os.getpid(), os.getpgrp()
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...; zombies are dead already and only wait to be reaped.
        state, ppid, pgrp = stat[stat.rfind(")") + 2 :].split()[:3]
        if state != "Z" and (int(pgrp) == group or int(ppid) == me):
            members.append(int(entry))
    return members


def _signal_group(sig: int) -> None:
    for pid in _job_processes():
        try:  # noqa: SIM105 (contextlib costs start-up time)
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap_orphans(worker: int) -> None:
    """Collect adopted orphans that exited; never the worker, whose status :meth:`_Supervisor.wait` takes."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == worker:
            return
        try:  # noqa: SIM105 (contextlib costs start-up time)
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            pass


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


def _exit_poller(pid: int) -> select.poll | None:
    """A poll object that turns ready when ``pid`` exits (through a pidfd); None where there is none."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return poller


class _LogPump:
    """Copies the worker's output from a pipe into worker.log, keeping at most ``cap`` bytes."""

    def __init__(self, read_fd: int, cap: int) -> None:
        self.fd = read_fd
        os.set_blocking(read_fd, False)
        self.out = os.open(WORKER_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.cap = cap
        self.kept = 0
        self.total = 0
        self.head = b""
        self.open = True
        self.truncated = False

    def pump(self, reads: int = _READS_PER_LOOK) -> None:
        """Copy what the pipe holds now (at most ``reads`` reads); at its end, close it."""
        for _ in range(reads):
            try:
                chunk = os.read(self.fd, _READ)
            except BlockingIOError:
                return
            if not chunk:
                self.close()
                return
            if len(self.head) < _HEAD:
                self.head += chunk[: _HEAD - len(self.head)]
            self.total += len(chunk)
            kept = chunk[: max(0, self.cap - self.kept)]
            if kept:
                self._write(kept)
                self.kept += len(kept)
            if len(kept) < len(chunk) and not self.truncated:
                self.truncated = True
                self._write(f"\n[wml: the log reached its limit of {self.cap} bytes; the rest is dropped]\n")

    def drain(self) -> None:
        """After the worker's end: copy what is left (writers that escaped the sandbox are not waited for)."""
        while self.open:
            before = self.total
            self.pump()
            if self.total == before:
                break
        self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)
            os.close(self.out)

    def _write(self, data: bytes | str) -> None:
        view = memoryview(data.encode() if isinstance(data, str) else data)
        while view:
            view = view[os.write(self.out, view) :]


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

    def wait(self, worker: int, log: _LogPump | None) -> int:
        """The worker's exit code once it exited (negative: the signal that killed it).

        Wakes as soon as the worker exits (its pidfd turns ready) or writes output, and every ``_POLL``
        seconds to enforce the deadlines and reap adopted orphans.
        """
        poller = _exit_poller(worker)
        if log is not None:
            if poller is None:
                poller = select.poll()
            poller.register(log.fd, select.POLLIN)
        while True:
            pid, status = os.waitpid(worker, os.WNOHANG)
            if pid == worker:
                return os.waitstatus_to_exitcode(status)
            _reap_orphans(worker)
            self._enforce(time.monotonic())
            if log is not None and log.open and poller is not None:
                log.pump()
                if not log.open:  # every writer closed its end; no need to look at it again
                    poller.unregister(log.fd)
            if poller is not None:
                poller.poll(_POLL * 1000)
            else:
                time.sleep(_POLL)

    def _enforce(self, now: float) -> None:
        if now >= self.deadline and not self.timed_out:
            self.timed_out = True
            _signal_group(signal.SIGTERM)
            self.kill_at = min(self.kill_at, now + self.grace)
        if now >= self.kill_at and not self.killed:
            self.killed = True
            _signal_group(signal.SIGKILL)


def _start(spec: dict[str, Any]) -> tuple[int, _LogPump | None]:
    """Fork and exec the worker in the job directory (our working directory); its pid, and the pump of
    its output when the log is capped.

    Raises OSError, with the reason, when the worker cannot be started.
    """
    argv, env, limits = [str(a) for a in spec["argv"]], dict(spec["env"]), spec.get("limits", {})
    log_max = int(spec.get("log_max") or 0)
    pump = None
    if log_max > 0:
        read_fd, log_fd = os.pipe()  # both close-on-exec; the child gets the write end as stdout/stderr
        pump = _LogPump(read_fd, log_max)
    else:
        log_fd = os.open(WORKER_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    failed_r, failed_w = os.pipe()  # close-on-exec: end of file without a word means exec succeeded
    sandboxed = bool(spec.get("sandboxed"))
    try:
        pid = os.fork()  # the runner has one thread, so forking is safe
        if pid == 0:
            _exec_worker(argv, env, limits, (null_fd, log_fd, failed_w), sandboxed)
        os.close(failed_w)
        failed_w = -1
        failure = os.read(failed_r, 4096).decode("utf-8", errors="replace")
    finally:
        for fd in (log_fd, null_fd, failed_r, failed_w):
            if fd >= 0:
                os.close(fd)
    if failure:
        os.waitpid(pid, 0)
        if pump is not None:
            pump.close()
        with open(WORKER_LOG_FILE, "ab") as log:
            log.write(f"wml: cannot start the worker: {failure}\n".encode())
        raise OSError(failure)
    return pid, pump


def _exec_worker(
    argv: list[str], env: dict[str, str], limits: dict[str, Any], fds: tuple[int, ...], sandboxed: bool
) -> None:
    """In the forked child: wire up stdin/stdout/stderr, apply the limits and exec; never returns."""
    null_fd, log_fd, failed_w = fds
    try:
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Python ignores these, and an ignored signal stays ignored across exec: give the worker defaults.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        if sandboxed:  # the sandbox must outlive a TERM to the group; the worker inside gets it back
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _apply_limits(limits)
        os.execvpe(argv[0], argv, env)  # noqa: S606 (the asset's command, deliberately no shell)
    except BaseException as e:
        reason = f"{e.strerror}: {argv[0]!r}" if isinstance(e, OSError) and e.strerror else repr(e)
        try:  # noqa: SIM105 (contextlib costs start-up time)
            os.write(failed_w, reason.encode("utf-8", errors="replace"))
        except OSError:
            pass
    finally:
        os._exit(127)


def _run(spec: dict[str, Any], sup: _Supervisor) -> dict[str, Any]:
    if sup.terminated:
        return {"terminated": True}
    try:
        worker, pump = _start(spec)
    except OSError as e:
        return {"error": f"cannot start the worker: {e}"}
    write_atomic(WORKER_PID_FILE, str(worker), durable=False)
    code = sup.wait(worker, pump)
    # What the worker left behind dies with it, as in a container.
    _signal_group(signal.SIGKILL)
    _reap_all(timeout=2.0)
    if pump is not None:
        pump.drain()
    sig = -code if code < 0 else None
    if spec.get("sandboxed") and code != 0:
        failed = _sandbox_failure(pump)
        if failed:
            return {"error": f"cannot start the worker: {failed}"}
        if 128 < code <= 128 + 64:  # bwrap's report of a worker killed by a signal
            sig = code - 128
    return {
        "exit_code": None if sig else code,
        "signal": sig,
        "timed_out": sup.timed_out,
        "terminated": sup.terminated,
        # Best effort: a SIGKILL nobody here sent is most likely the kernel's OOM killer.
        "oom": sig == signal.SIGKILL and not sup.killed,
    }


def _sandbox_failure(pump: _LogPump | None) -> str | None:
    """The complaint of bwrap, setpriv or env when it is all the output there was (they exit non-zero
    with one line when the sandbox or the worker's program cannot be started); None otherwise."""
    if pump is None or pump.total > _HEAD:
        return None
    lines = pump.head.strip().split(b"\n")
    program, said, _ = lines[0].partition(b": ")
    if len(lines) == 1 and said and program.rsplit(b"/", 1)[-1] in _SANDBOX_PROGRAMS:
        return lines[0].decode("utf-8", errors="replace")
    return None


def _read_spec() -> dict[str, Any]:
    """The launch spec: from stdin (marshal), or from launch.json when stdin brings nothing."""
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    if chunks:
        # Written by the server that spawned us, through a pipe only it holds.
        spec: dict[str, Any] = marshal.loads(b"".join(chunks))  # noqa: S302
        return spec
    import json  # only this fallback needs it

    with open(LAUNCH_FILE, encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
        return loaded


def _exit_json(result: dict[str, Any]) -> str:
    """exit.json's text. Without an error every value is a number, a boolean or null, written here; only
    an error message needs the json module (and its import time) for escaping."""
    if result.get("error") is not None:
        import json  # only a failure needs it

        return json.dumps(result)
    return "{" + ", ".join(f'"{key}": {_plain(value)}' for key, value in result.items()) + "}"


def _plain(value: int | bool | None) -> str:
    """A number, a boolean or null, as JSON."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -I -S local_runner.py <job dir>", file=sys.stderr)
        return 2
    sup = _Supervisor()  # installed first: a TERM before the worker exists still counts
    signal.signal(signal.SIGTERM, sup.on_sigterm)
    _become_subreaper()
    os.chdir(argv[1])  # every path below is relative to the job directory
    write_atomic(RUNNER_PID_FILE, process_identity(os.getpid()), durable=False)
    result: dict[str, Any] = {"exit_code": None, "signal": None, "timed_out": False}
    result |= {"terminated": False, "oom": False, "error": None}
    try:
        spec = _read_spec()
        sup.configure(float(spec.get("timeout", 0)), float(spec.get("grace", 5)))
        result |= _run(spec, sup)
    except Exception as e:  # the exit file must be written whatever happened
        result["error"] = f"runner failed: {type(e).__name__}: {e}"
    write_atomic(EXIT_FILE, _exit_json(result))
    return 0


if __name__ == "__main__":
    status = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # skips the interpreter's teardown: the backend takes our exit as the job's end
