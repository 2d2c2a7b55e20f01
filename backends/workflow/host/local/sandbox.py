"""The local worker's sandbox: bubblewrap (``bwrap``, Debian's ``bubblewrap``) around every worker.

A local worker runs code a consumer controls the inputs of, on the machine that holds the service's
database, keys and every consumer's files. In the sandbox it gets:

- its own PID namespace (``/proc`` shows only the job's processes; when the worker exits, the kernel kills
  everything it left, double ``setsid`` or not), IPC, UTS and cgroup namespaces, and a network namespace
  with only a loopback unless the asset sets ``local.network: true``;
- the system read-only (each top-level directory of ``/`` bound read-only, except ``/proc``, ``/dev``,
  ``/sys``, ``/tmp``, ``/run``), with the data directory, the job directories and the file storage hidden
  under empty tmpfs mounts; a fresh ``/dev`` (``/dev/shm`` capped at :data:`SHM_SIZE`) and ``/run``;
- its job's ``inputs`` read-only at ``/wml/inputs``, its ``outputs`` at ``/wml/outputs`` and the job's
  scratch directory at ``/tmp`` (also ``HOME`` and the working directory): nothing else is writable;
- the files its command names by absolute path (the asset's script), read-only, where the rest would hide
  them (a checkout under ``/tmp``, say);
- when the server runs as root, a user of its own (``setpriv``: the job's uid/gid, see
  :mod:`backends.workflow.host.uids`; no supplementary groups, no capabilities, no new privileges) so Unix
  permissions apply to it as to any unprivileged user; under a non-root server, bwrap's user namespace
  keeps the server's uid (the hidden paths and the PID namespace are then what separates them);
- RLIMIT_NPROC (per job's uid, so only when the server runs as root), RLIMIT_FSIZE and a cap on the log
  (applied by the runner, :mod:`backends.workflow.host.local.runner`).

bwrap runs in the runner's process group, so the runner's signals reach it: it is started with SIGTERM
ignored (a TERM must reach the worker, not end the sandbox at once: bwrap's PID 1 dies with it), and
``env --default-signal=TERM`` gives the worker the default back. bwrap reports a worker killed by signal N
as exit status 128 + N; the runner reads it back as that signal.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backends.workflow.base import JobRun, WorkflowBackendError
from backends.workflow.host.jobdir import JobDir, WorkerPaths, worker_env
from backends.workflow.host.uids import DEFAULT_UID_BASE, job_uid

INPUTS = "/wml/inputs"
OUTPUTS = "/wml/outputs"
SCRATCH = "/tmp"  # noqa: S108 (the worker's own /tmp: its job's scratch directory)
SHM_SIZE = 64 * 1024 * 1024
# Top-level entries of / never bound into the sandbox: made fresh (proc, dev, tmp, run), left out (sys),
# or ours (wml).
_NOT_BOUND = frozenset({"proc", "dev", "sys", "tmp", "run", "wml", "lost+found"})
_PROBE_TIMEOUT = 10.0


class SandboxUnavailableError(WorkflowBackendError):
    """bubblewrap is missing or cannot make a sandbox here; the local backend does not start."""


@dataclass(frozen=True, slots=True)
class SandboxOptions:
    """How local workers are confined (see the module docstring); ``enabled=False`` turns it all off."""

    enabled: bool = True
    uid_base: int = DEFAULT_UID_BASE  # first uid of the range, used when the server runs as root
    hidden: tuple[Path, ...] = ()  # besides the job directories: the data directory, the file storage
    max_processes: int = 1024
    max_file_size: int = 16 * 1024**3
    max_log_size: int = 64 * 1024**2
    bwrap: str = "bwrap"

    @classmethod
    def from_settings(cls, settings: Any) -> SandboxOptions:
        """From the service's settings (``settings.local``, ``core.settings.LocalSettings``, and what to
        hide: the data directory, file storage); the defaults without any. (Backends do not import core.)"""
        if settings is None:
            return cls()
        hidden = [Path(settings.data_dir)]
        storage_url = settings.resolved_storage_url()
        if storage_url.startswith("file://"):
            hidden.append(Path(urlsplit(storage_url).path))
        local = settings.local
        return cls(
            enabled=local.sandbox == "on",
            uid_base=local.sandbox_uid,
            hidden=tuple(hidden),
            max_processes=local.max_processes,
            max_file_size=local.max_file_size,
            max_log_size=local.max_log_size,
        )


def launch_spec(
    options: SandboxOptions,
    run: JobRun,
    job: JobDir,
    dotenv: Mapping[str, str],
    *,
    hidden: Sequence[Path],
    grace: float,
) -> dict[str, Any]:
    """What the runner starts: the worker's argv (in its sandbox when enabled), environment and limits.

    Blocking: it prepares the job directory for the worker's uid.
    """
    argv = list(run.local_command or ())
    limits: dict[str, Any] = {
        "memory": run.resources.memory,
        "cpu_seconds": run.run_timeout * run.resources.cpu,
        "nofile": 1024,
        "fsize": options.max_file_size,
    }
    paths = WorkerPaths.of(job)
    if options.enabled:
        uid = worker_uid(options, run.job_id)
        prepare(job.root, uid)
        argv = command(
            options,
            job.root,
            argv,
            hidden=hidden,
            uid=uid,
            network=run.local_network,
            placed=placements(run, job),
            trusted=not run.consumer_command,
        )
        paths = WorkerPaths(INPUTS, run.output_dir or OUTPUTS, SCRATCH, placed=True)
        if uid is not None:  # RLIMIT_NPROC counts a uid's processes: only where the job has its own
            limits["nproc"] = options.max_processes
    return {
        "argv": argv,
        "env": worker_env(run, paths, dotenv),
        "timeout": run.run_timeout,
        "grace": grace,
        "limits": limits,
        "log_max": options.max_log_size,
        "sandboxed": options.enabled,
    }


def running_as_root() -> bool:
    return os.geteuid() == 0


def worker_uid(options: SandboxOptions, job_id: str) -> int | None:
    """The uid (and gid) the job's worker runs as; None: the server's own (not root: nothing to drop)."""
    if not running_as_root():
        return None
    return job_uid(job_id, options.uid_base)


def command(
    options: SandboxOptions,
    job_root: Path,
    argv: Sequence[str],
    *,
    hidden: Sequence[Path],
    uid: int | None,
    network: bool,
    placed: Sequence[Placement] = (),
    trusted: bool = True,
) -> list[str]:
    """The argv that runs ``argv`` in the sandbox of the job at ``job_root``; ``placed``: more binds, at
    the absolute paths the asset chose (:func:`placements`)."""
    args = [options.bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    args += ["--unshare-cgroup-try"]
    if not network:
        args.append("--unshare-net")
    if uid is None:
        args.append("--unshare-user")
    args += _system()
    args += ["--proc", "/proc", "--dev", "/dev"]
    shm = "/dev/shm"  # noqa: S108 (a fresh tmpfs of SHM_SIZE bytes, the sandbox's own)
    args += ["--size", str(SHM_SIZE), "--perms", "1777", "--tmpfs", shm, "--tmpfs", "/run"]
    if network:
        args += ["--ro-bind-try", "/run/systemd/resolve", "/run/systemd/resolve"]
    for path in _hideable(hidden):
        args += ["--tmpfs", str(path)]
    args += ["--perms", "0755", "--dir", "/wml"]  # (bwrap would make it 0700: closed to the worker)
    args += ["--ro-bind", str(job_root / "inputs"), INPUTS, "--bind", str(job_root / "outputs"), OUTPUTS]
    args += ["--bind", str(job_root / "tmp"), SCRATCH]
    args += _placed_binds(placed)
    for file in _unseen_files(argv, hidden) if trusted else ():
        # bwrap makes missing directories 0700 (closed to the worker's uid): make the file's way open.
        for parent in reversed(Path(file).parents[:-2]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", file, file]
    args += ["--remount-ro", "/", "--chdir", SCRATCH, "--"]
    if uid is not None:
        args += [_tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        args += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return [*args, _tool("env"), "--default-signal=TERM", "--", *argv]


@dataclass(frozen=True, slots=True)
class Placement:
    """A bind at a path the asset chose: an input (read-only) or the output directory (writable)."""

    source: str  # on the host
    target: str  # in the sandbox, absolute (validated by the asset: no system directory, no ..)
    writable: bool = False


def placements(run: JobRun, job: JobDir) -> list[Placement]:
    """The run's inputs placed at absolute paths and its output directory, as sandbox binds."""
    placed = [Placement(str(job.inputs / i.path), i.worker_path) for i in run.inputs if i.worker_path]
    if run.output_dir:
        placed.append(Placement(str(job.outputs), run.output_dir, writable=True))
    return placed


def _placed_binds(placed: Sequence[Placement]) -> list[str]:
    """bwrap arguments that bind each placement at its target.

    The system is bound read-only, so a target whose directory does not exist cannot be created in it:
    an empty tmpfs (made read-only again afterwards) goes over the deepest directory of the target's
    path that exists on the host (``/home`` for ``/home/carla/rosbag``; nothing for ``/output``, which
    bwrap makes in its own root), and the missing directories are made in it, open to the worker.
    """
    covers: set[str] = set()
    for place in placed:
        anchor = _existing_ancestor(place.target)
        if anchor != "/":
            covers.add(anchor)
    covers = {c for c in covers if not any(c.startswith(o + "/") for o in covers)}  # outermost only
    args: list[str] = []
    for cover in sorted(covers):
        args += ["--perms", "0755", "--tmpfs", cover]
    for place in placed:
        for parent in reversed(Path(place.target).parents[:-1]):
            inside = any(str(parent) == c or str(parent).startswith(c + "/") for c in covers)
            if inside or not os.path.isdir(parent):
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--bind" if place.writable else "--ro-bind", place.source, place.target]
    for cover in sorted(covers):
        args += ["--remount-ro", cover]
    return args


def _existing_ancestor(target: str) -> str:
    """The deepest proper ancestor directory of ``target`` that exists on the host (not a symbolic link),
    or ``target`` itself when it exists (it is then mounted over directly)."""
    path = Path(target)
    if os.path.lexists(path) and not path.is_symlink():
        return "/"
    for parent in path.parents:
        if parent.is_dir() and not parent.is_symlink():
            return str(parent)
    return "/"


def prepare(job_root: Path, uid: int | None) -> None:
    """Give the worker's uid its writable directories; inputs stay the server's, readable by all."""
    (job_root / "tmp").mkdir(mode=0o700, exist_ok=True)
    os.chmod(job_root / "inputs", 0o755)  # noqa: S103 (inside the 0700 job directory: the worker's view)
    if uid is not None:
        for name in ("outputs", "tmp"):
            os.chown(job_root / name, uid, uid)


def probe(options: SandboxOptions) -> None:
    """Make one sandbox as a worker would get it, or raise SandboxUnavailableError saying why."""
    bwrap = shutil.which(options.bwrap)
    if bwrap is None:
        raise SandboxUnavailableError(
            "the local backend runs workers in a bubblewrap sandbox, and bwrap is not installed "
            "(Debian: apt-get install bubblewrap); WML_LOCAL_SANDBOX=off runs them unconfined "
            "(development only)"
        )
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wml-sandbox-probe-") as tmp:
        root = Path(tmp)
        for name in ("inputs", "outputs", "tmp"):
            (root / name).mkdir()
        uid = worker_uid(options, "probe")
        prepare(root, uid)
        argv = command(
            options, root, ["/bin/sh", "-c", f"touch {OUTPUTS}/ok"], hidden=(), uid=uid, network=False
        )
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=_PROBE_TIMEOUT, check=False, env={"PATH": _PATH}
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailableError(f"cannot run bubblewrap: {e}") from None
        if done.returncode != 0 or not (root / "outputs" / "ok").exists():
            said = done.stderr.decode(errors="replace").strip().splitlines()
            raise SandboxUnavailableError(
                f"bubblewrap cannot make the workers' sandbox here: {said[-1] if said else done.returncode}"
            )


_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@functools.cache
def _tool(name: str) -> str:
    """A system program by its absolute path (the sandbox binds the same system), so the worker's PATH
    does not choose it."""
    return shutil.which(name, path=_PATH) or name


def _system() -> list[str]:
    """Every top-level entry of / (but the fresh ones), read-only; symbolic links as links."""
    args: list[str] = []
    with os.scandir("/") as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in _NOT_BOUND:
                continue
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry.path), entry.path]
            else:
                args += ["--ro-bind", entry.path, entry.path]
    return args


def _unseen_files(argv: Sequence[str], hidden: Sequence[Path]) -> list[str]:
    """The files the asset's command names by absolute path (its script, say) that the sandbox would not
    show: under a fresh top-level directory (/tmp, /run) or a hidden one. Each is bound read-only, alone."""
    unseen = []
    hidden_dirs = [Path(h).resolve() for h in hidden]
    for arg in argv:
        if not arg.startswith("/") or not os.path.isfile(arg):
            continue
        path = Path(arg).resolve()
        top = path.parts[1] if len(path.parts) > 1 else ""
        if top in _NOT_BOUND or any(path.is_relative_to(h) for h in hidden_dirs):
            unseen.append(str(path))
    return unseen


def _hideable(paths: Sequence[Path]) -> list[Path]:
    """The existing ``paths`` that the bound system would show (not under a fresh top-level directory)."""
    shown = []
    for path in paths:
        resolved = Path(path).resolve()
        top = resolved.parts[1] if len(resolved.parts) > 1 else ""
        if top and top not in _NOT_BOUND and resolved.is_dir():
            shown.append(resolved)
    return sorted(set(shown))
