"""Shared pieces of the benchmarks: a `wml serve` subprocess on a scratch data directory, a consumer token,
percentiles, spreads over repeated runs, and the result file every benchmark writes
(``bench/results/<name>.json``).

Every result file says what produced it and when (:func:`provenance`): the commit and whether the tree
had uncommitted changes, the UTC start and end, the exact command, and the machine (CPU model, cores,
memory, and its load average before the run, read when this module is first imported, i.e. when the
benchmark starts). A figure measured over repeated runs is stored as :func:`spread` (min, median, max and
every value); tables show the median and the range, verdicts use the median.

A size or variant that cannot be measured (a timeout, a refused connection on a machine too busy) is
recorded as ``{"not_measured": reason}`` by :func:`measured_or_reason`, and the rest still runs.

The server always runs as its own process so that its CPU and memory are not the load generator's; on a
2-core machine that leaves one core to the server and one to the clients.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
PYTHON = sys.executable
SECRET_KEY = "bench-signing-key-of-at-least-32-bytes"
ADMIN_TOKEN = "bench-admin"
# Read when a benchmark starts (it imports this module first), before it loads the machine itself.
LOAD_BEFORE = os.getloadavg()
STARTED_AT = dt.datetime.now(dt.UTC)


STOPPING = False  # SIGTERM came: what is left is not measured, what was measured is written


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    global STOPPING
    STOPPING = True
    raise SystemExit(128 + signum)


# bench/run_all.py stops a benchmark past its time limit with SIGTERM: exiting through the ``finally``
# blocks stops its servers and kills its jobs' workers instead of leaving them running, and
# measured_or_reason() turns the interrupted measurement (and those not begun) into not_measured, so the
# benchmark still writes the figures it has.
signal.signal(signal.SIGTERM, _exit_on_sigterm)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


def proc_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return int(match[1]) if match else 0


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of durations given in seconds, in milliseconds."""
    return {
        "p50_ms": percentile(seconds, 0.50) * 1000,
        "p90_ms": percentile(seconds, 0.90) * 1000,
        "p99_ms": percentile(seconds, 0.99) * 1000,
        "mean_ms": (statistics.fmean(seconds) * 1000) if seconds else 0.0,
        "count": len(seconds),
    }


def catalog(directory: Path, assets: Sequence[dict[str, Any]]) -> Path:
    """The example dummy-job asset (runnable from anywhere) plus ``assets`` (overrides of it, with an id)."""
    base = yaml.safe_load((ROOT / "assets" / "dummy-job.yaml").read_text())
    base["local"] = {"command": ["sh", str(ROOT / "dummy-job" / "entrypoint.sh")]}
    directory.mkdir(parents=True, exist_ok=True)
    for spec in [base, *({**base, **a} for a in assets)]:
        (directory / f"{spec['id']}.yaml").write_text(yaml.safe_dump(spec))
    return directory


def environment(work: Path, port: int, *, data: str = "data", **settings: Any) -> dict[str, str]:
    """A `wml serve` environment on the embedded default (SQLite, local disk, local processes), with its
    data in ``work/data``; ``settings`` become ``WML_*`` variables."""
    data_dir = work / data
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "WML_DATA_DIR": str(data_dir),
        "WML_HOST": "127.0.0.1",
        "WML_PORT": str(port),
        "WML_SECRET_KEY": SECRET_KEY,
        "WML_ADMIN_TOKEN": ADMIN_TOKEN,
        "WML_LOG_LEVEL": "WARNING",
    }
    env.update({f"WML_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def create_token(
    env: dict[str, str], name: str = "bench", assets: Sequence[str] = ("dummy-job",), *, tree: Path = ROOT
) -> str:
    asset_args = [arg for asset in assets for arg in ("--asset", asset)]
    done = subprocess.run(
        [PYTHON, "-m", "wml.cli", "consumers", "create", name, *asset_args],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.split("token (shown once): ", 1)[1].split()[0]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def wml_server(work: Path, *, tree: Path = ROOT, **settings: Any) -> Iterator[Server]:
    """``wml serve`` as a subprocess on a free port; SIGTERM and reaped at the end.

    ``tree`` is the source tree it runs from (``python -m`` puts it first on the path): another revision's
    exported tree serves that revision's code with this checkout's virtualenv."""
    port = free_port()
    env = environment(work, port, **settings)
    process = subprocess.Popen(
        [PYTHON, "-m", "wml.cli", "serve"], env=env, cwd=tree, stdout=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/readyz")
        yield Server(process=process, url=url, env=env)
    finally:
        stop(process)


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    # Only the trailing newline goes: a status line starts with a space (" M path").
    return done.stdout.rstrip("\n") if done.returncode == 0 else ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError):
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.MULTILINE)
        if match:
            return round(int(match[1]) / 1024**2, 1)
    return 0.0


def machine() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_before": [round(x, 2) for x in LOAD_BEFORE],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def provenance() -> dict[str, Any]:
    """Which code ran, when, how: the commit, whether the tree differed from it (results and the table
    excepted: the run itself rewrites them), the UTC start and end, and the exact command."""
    changed = [
        line
        for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()
        if not line[3:].startswith(("bench/results/", "bench/README.md"))
    ]
    return {
        "commit": _git("rev-parse", "HEAD").strip() or "unknown",
        "dirty": bool(changed),
        "started_utc": STARTED_AT.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    """min / median / max of a figure measured in repeated runs, with every value (an empty spread when
    none was measured)."""
    if not values:
        return {"runs": 0, "values": []}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "runs": len(values),
        "values": list(values),
    }


def measured_or_reason(label: str, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``measure()``'s figures, or ``{"not_measured": reason}`` when it failed: one size that cannot
    finish (e.g. on a machine too busy) must not cost the others their figures."""
    if STOPPING:
        return {"not_measured": "not begun: the benchmark was stopped (its time limit)"}
    try:
        return measure()
    except (Exception, SystemExit) as e:  # any failure of one measurement is reported, not raised
        if isinstance(e, SystemExit) and not STOPPING:
            raise
        reason = f"{type(e).__name__}: {e}".strip()[:500]
        if STOPPING:
            reason = f"stopped before it finished (its time limit); {reason}"
        print(f"!! {label}: not measured: {reason}", file=sys.stderr, flush=True)
        traceback.print_exc(file=sys.stderr)
        return {"not_measured": reason}


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a live process (``children``: of its reaped children instead)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is fields[0], so utime/stime/cutime/cstime are fields[11..14].
    ticks = int(fields[13]) + int(fields[14]) if children else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def write_result(name: str, document: dict[str, Any]) -> Path:
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"benchmark": name, "provenance": provenance(), "machine": machine(), **document}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
