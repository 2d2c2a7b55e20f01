"""Kubernetes control-plane cost: API requests and watch streams per job, against the fake API server.

The whole service runs in this process (``tests.support.api.running_api``, the real server on a
loopback port) with ``WML_WORKFLOW=kubernetes://wml-jobs``, pointed at the fake Kubernetes API server of
the backend's tests (``tests.support.kube_backend.fake_kube``: real HTTP, real kubernetes_asyncio client)
whose fake kubelet really runs each Pod (side-cars and the dummy worker with ``SLEEPTIME=0``).

It runs ``--jobs`` jobs (all created at once, 8 running at a time) to COMPLETE, waits until the backend
has cleaned up every object, and counts every request the fake API server received, by verb and
resource (``LIST`` is a GET of a collection, ``GET`` of one object). The baseline is the same count for a
tenth of the jobs in the same run: a constant cost per job shows as the same requests per job at both
sizes (ratio 1.0), while polling or per-job watches would make the bigger run cost more per job.

The lists are reconcile's (3 per pass: Jobs, Pods, Secrets, one page per 500 objects): they come with
the reconcile interval (1 s here, 30 s by default), not with jobs, so they are reported apart as well
(``per_job_without_lists``, ``reconcile_lists_per_s``). Every job must also keep its worker log
(``jobs_without_log``: a log lost to cleanup shows there).

It also reports jobs per minute through the backend, and, from the stored events, each job's time from
``createJob`` (its QUEUED event) to RUNNING, which includes waiting for one of the 8 running slots, and
from INITIALIZING (the Job and its Secret submitted) to RUNNING, the pod start as the service sees it,
compared with the Kubernetes pod-start SLO (p99 <= 5 s; the fake kubelet starts Pods at once, so this
is the service's and the API round trips' share of it, not a real cluster's).

The whole measurement (a tenth, then the full count) is repeated ``--repeats`` times; every figure is
stored as min/median/max over the repeats, and a repeat that fails is recorded as ``not_measured`` with
the reason.

Usage: ``.venv/bin/python bench/kube_control_plane.py [--jobs 500] [--repeats 3] [--output NAME]``.
Writes ``bench/results/<NAME>.json`` (``kube_control_plane``). ``make bench`` runs 3 x 100 jobs; 1,000
jobs (the issue's figure, ``--jobs 1000 --repeats 1 --output kube_control_plane_1000``, which the table
shows too) take 3 to 6 minutes on 2 cores: the fake cluster, its kubelet and the service share one
process, about 120 ms of CPU per job.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import measured_or_reason, spread, summary_ms, write_result
from tests.support.api import TERMINAL, running_api
from tests.support.kube_backend import fake_kube
from tests.support.kube_kubelet import SIDECAR_IMAGE


async def measure(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wml-bench-kube-") as scratch:
        work = Path(scratch)
        data_dir = work / "data"
        async with (
            fake_kube(work, f"file://{data_dir / 'files'}", run_pods=True) as kube,
            running_api(
                data_dir,
                workflow="kubernetes://wml-jobs?deadline_allowance=0",
                k8s_api_url=kube.api.url,
                k8s_sidecar_image=SIDECAR_IMAGE,
                k8s_retry_max_delay=0.1,
                max_running_jobs_per_consumer=8,
                max_queued_jobs_per_consumer=10 * jobs,
                backend_capacity=8,
                log_level="WARNING",
            ) as api,
        ):
            token = await api.consumer("bench")
            before = len(kube.api.requests)
            started = time.perf_counter()
            created = [await api.create_job(token, parameters={"SLEEPTIME": 0}) for _ in range(jobs)]
            states: collections.Counter[str] = collections.Counter()
            without_log = 0
            for job in created:
                final = await api.wait_for(token, job["id"], TERMINAL, timeout=1800)
                states[final["state"]] += 1
                without_log += final["log"] is None
            finished = time.perf_counter()
            await kube.nothing_left(timeout=120)
            elapsed = time.perf_counter() - started
            to_running, pod_start = [], []
            for job in created:
                at = {e.state.value: e.created_at for e in await api.services.store.events.events(job["id"])}
                if "RUNNING" in at:
                    to_running.append((at["RUNNING"] - at["QUEUED"]).total_seconds())
                    pod_start.append((at["RUNNING"] - at["INITIALIZING"]).total_seconds())
            calls = kube.api.requests[before:]
            startup = collections.Counter(_verb(c) for c in kube.api.requests[:before])
            watches = sum(1 for c in kube.api.requests if c.method == "WATCH")
    by_kind = collections.Counter(_verb(c) for c in calls)
    lists = by_kind_total(by_kind, "LIST")
    return {
        "jobs": jobs,
        "final_states": dict(states),
        "jobs_without_log": without_log,
        "elapsed_s": elapsed,
        "jobs_per_minute": jobs / (finished - started) * 60,
        "create_to_running": summary_ms(to_running),
        "initializing_to_running": summary_ms(pod_start),
        "requests": len(calls),
        "requests_per_job": len(calls) / jobs,
        "per_job_without_lists": (len(calls) - lists) / jobs,
        "reconcile_lists": lists,
        "reconcile_lists_per_s": lists / elapsed,
        "watch_requests_during_jobs": by_kind_total(by_kind, "WATCH"),
        "watch_requests_whole_run": watches,
        "startup_requests": dict(sorted(startup.items())),
        "by_kind": dict(sorted(by_kind.items())),
        "by_kind_per_job": {k: v / jobs for k, v in sorted(by_kind.items())},
    }


def _verb(call: Any) -> str:
    method = "LIST" if call.method == "GET" and call.name is None else call.method
    return f"{method} {call.plural}"


def by_kind_total(by_kind: collections.Counter[str], method: str) -> int:
    return sum(v for k, v in by_kind.items() if k.startswith(f"{method} "))


def repeat(jobs: int) -> dict[str, Any]:
    baseline = asyncio.run(measure(max(1, jobs // 10)))
    full = asyncio.run(measure(jobs))
    return {
        "run": full,
        "baseline": baseline,
        "ratio_requests_per_job_full_over_baseline": full["requests_per_job"] / baseline["requests_per_job"],
        "ratio_without_lists": full["per_job_without_lists"] / baseline["per_job_without_lists"],
    }


FIGURES = {  # name -> where it is in a repeat
    "requests_per_job": ("run", "requests_per_job"),
    "per_job_without_lists": ("run", "per_job_without_lists"),
    "baseline_requests_per_job": ("baseline", "requests_per_job"),
    "jobs_per_minute": ("run", "jobs_per_minute"),
    "create_to_running_p50_ms": ("run", "create_to_running", "p50_ms"),
    "create_to_running_p99_ms": ("run", "create_to_running", "p99_ms"),
    "pod_start_p50_ms": ("run", "initializing_to_running", "p50_ms"),
    "pod_start_p99_ms": ("run", "initializing_to_running", "p99_ms"),
    "ratio_requests_per_job_full_over_baseline": ("ratio_requests_per_job_full_over_baseline",),
    "ratio_without_lists": ("ratio_without_lists",),
}


def dig(document: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="kube_control_plane", help="result name under bench/results/")
    args = parser.parse_args()
    repeats = [measured_or_reason(f"repeat {i + 1}", lambda: repeat(args.jobs)) for i in range(args.repeats)]
    done = [r for r in repeats if "not_measured" not in r]
    document = {
        "settings": {
            "jobs": args.jobs,
            "baseline_jobs": max(1, args.jobs // 10),
            "repeats": args.repeats,
            "worker": "dummy-job SLEEPTIME=0",
        },
        "figures": {name: spread([dig(r, path) for r in done]) for name, path in FIGURES.items()},
        "repeats": repeats,
        "target": "a small constant per job, no polling; pod start p99 <= 5 s (the Kubernetes SLO)",
    }
    path = write_result(args.output, document)
    for number, measured in enumerate(repeats, 1):
        if "not_measured" in measured:
            print(f"repeat {number}: not measured: {measured['not_measured']}")
            continue
        for side in ("baseline", "run"):
            r = measured[side]
            print(
                f"{number}: {r['jobs']:>5} jobs: {r['requests']} requests, {r['requests_per_job']:.2f}/job,"
                f" {r['watch_requests_whole_run']} watch requests in all, {r['elapsed_s']:.1f} s,"
                f" {r['jobs_per_minute']:.0f} jobs/min, {r['final_states']}, {r['jobs_without_log']} without"
                f" a log; {r['per_job_without_lists']:.2f}/job without reconcile's {r['reconcile_lists']}"
                f" lists; pod start p50 {r['initializing_to_running']['p50_ms']:.0f} ms p99"
                f" {r['initializing_to_running']['p99_ms']:.0f} ms"
            )
    for name, figure in document["figures"].items():
        if figure["runs"]:
            print(f"  {name}: median {figure['median']:.2f} ({figure['min']:.2f}-{figure['max']:.2f})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
