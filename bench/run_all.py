"""Run every benchmark, then regenerate the results table in ``bench/README.md`` from their JSON.

Each benchmark runs as its own process with the workload sized for ``make bench``: the whole run stays
under 15 minutes on 2 cores. Each has a time limit, and the run as a whole a budget (``--budget``, 14
minutes): a benchmark past its limit is stopped, and one with no time left is not started, and either is
written to its result file as ``not_measured`` with the reason, so a busy machine gives a table with
slower figures and gaps, not a failed run. A benchmark that itself measures several sizes reports a size
it cannot finish the same way and goes on. ``make bench`` exits non-zero only when a benchmark crashed
(exited non-zero).

``--only`` runs a subset and ``--table-only`` just rebuilds the table (``bench/table.py``) from
``bench/results/``. The table sits between the two markers in ``bench/README.md``; the rest of that file
is left alone. ``transfer`` needs about 4 GiB of free disk for its 1 GiB files.

Usage: ``.venv/bin/python bench/run_all.py [--only api_overhead,job_overhead,fanout] [--table-only]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS_DIR as RESULTS
from bench.common import write_result
from bench.table import table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
# result name -> (script, arguments, time limit in seconds): the workload make bench runs, the benchmarks
# with a target first. The limits are about 1.5 to 2 times what each takes on a quiet 2-core machine.
BENCHMARKS: dict[str, tuple[str, list[str], float]] = {
    # 30 events in 3 rounds per size: each round's p99 to every subscriber is its slowest of 10 events.
    # 5,000 subscribers (--subscribers 1000,5000,10000) add about a minute.
    "fanout": ("fanout", ["--subscribers", "1000,10000", "--events", "30", "--rounds", "3"], 420),
    "job_overhead": ("job_overhead", ["--jobs", "210", "--concurrency", "4", "--single-jobs", "60"], 180),
    "api_overhead": ("api_overhead", ["--clients", "16", "--seconds", "8", "--rounds", "4"], 200),
    # 1 GiB on S3 (moto's server, ~65 MiB/s) would add about two minutes: --s3-sizes 100M,1G.
    "transfer": (
        "transfer",
        ["--sizes", "100M,1G", "--s3-sizes", "100M", "--backends", "file,s3", "--repeats", "3"],
        300,
    ),
    # 3 repeats of 100 jobs (and 10 for the baseline); 1,000 jobs: --jobs 1000 --repeats 1 (~3 minutes).
    "kube_control_plane": ("kube_control_plane", ["--jobs", "100", "--repeats", "3"], 200),
    "replicas": (
        "replicas",
        ["--jobs", "120", "--concurrency", "8", "--replicas", "1,2,3", "--repeats", "3"],
        200,
    ),
    "startup": ("startup", ["--jobs", "1000", "--repeats", "3"], 150),
}
BUDGET = 14 * 60.0


def run(name: str, deadline: float) -> int | None:
    """Run one benchmark; its exit status, or None when it was stopped or not started for lack of time
    (then its result file says so)."""
    script, arguments, limit = BENCHMARKS[name]
    left = deadline - time.monotonic()
    if left < 30:
        write_result(name, {"not_measured": "not started: make bench's time budget was used up"})
        return None
    command = [sys.executable, str(ROOT / "bench" / f"{script}.py"), *arguments]
    started = time.time()
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        return process.wait(timeout=min(limit, left))
    except subprocess.TimeoutExpired:
        stop_group(process)
        reason = f"stopped after {min(limit, left):.0f} s (its limit, or make bench's budget)"
        keep_or_replace(name, started, reason, " ".join(command[1:]))
        return None
    except BaseException:  # interrupted: take the benchmark and everything it started down too
        stop_group(process)
        raise


def keep_or_replace(name: str, started: float, reason: str, command: str) -> None:
    """A stopped benchmark's result file: the one it wrote on its way out (SIGTERM ends it through its
    ``finally`` blocks and the sizes it had not finished show as not measured), marked as stopped; or, when
    it wrote none in this run, one that says it was not measured."""
    path = RESULTS / f"{name}.json"
    if path.exists() and path.stat().st_mtime >= started:
        document = json.loads(path.read_text())
        document["stopped"] = reason
        path.write_text(json.dumps(document, indent=2) + "\n")
        return
    write_result(name, {"not_measured": reason, "command": command})


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the benchmark's process group (its servers and clients), SIGKILL 30 s later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def write_table() -> None:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{table()}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole run")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    crashed = []
    if not args.table_only:
        deadline = time.monotonic() + args.budget
        for name in names:
            started = time.monotonic()
            print(f"== {name}", flush=True)
            status = run(name, deadline)
            said = "not measured (time)" if status is None else f"exit {status}"
            print(f"== {name}: {said} in {time.monotonic() - started:.0f} s", flush=True)
            if status:
                crashed.append(name)
    write_table()
    print(f"table written to {README.relative_to(ROOT)}")
    if crashed:
        print(f"crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
