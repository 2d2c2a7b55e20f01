"""Server cold start to ready, and the API's peak memory with 1,000 jobs in flight.

Each of ``--repeats`` rounds (3) starts ``wml serve`` (a subprocess, the embedded default) on a fresh,
empty data directory and measures:

- **cold start**: from spawning the process to the first ``200`` of ``GET /readyz`` (polled every 20 ms),
  which includes the interpreter's start-up, imports, creating and migrating the database and starting
  the supervisor; the raw baseline is the same for ``python -c pass`` (the interpreter alone) and for a
  bare uvicorn app answering ``/readyz`` (interpreter, uvicorn and Starlette), spawned the same way;
- **peak memory with jobs in flight**: the server's VmRSS once ready, then its peak (``VmHWM``) after
  ``--jobs`` (1,000) ``createJob`` mutations from 16 concurrent clients, all of them left in flight (the
  asset's worker is ``sleep 600`` with one running slot per consumer, so one runs and the rest stay
  QUEUED, each one in the database, the supervisor's passes and the API's answers).

Every figure is stored as min/median/max over the rounds.

Usage: ``.venv/bin/python bench/startup.py [--jobs 1000] [--repeats 3]``. Writes
``bench/results/startup.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    ROOT,
    catalog,
    create_token,
    environment,
    free_port,
    measured_or_reason,
    proc_kib,
    spread,
    stop,
    write_result,
)
from tests.support.api import kill_leftover_workers

ASSET = "idle-job"
CREATE = "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename ... on Job { id } } }"
BARE = (
    "import sys, uvicorn\n"
    "from starlette.applications import Starlette\n"
    "from starlette.responses import JSONResponse\n"
    "from starlette.routing import Route\n"
    "async def ready(_): return JSONResponse({'ok': True})\n"
    "uvicorn.run(Starlette(routes=[Route('/readyz', ready)]), host='127.0.0.1', port=int(sys.argv[1]),"
    " log_level='warning')\n"
)


def until_ready(url: str, process: subprocess.Popen[bytes], started: float, timeout: float = 120) -> float:
    """Seconds from ``started`` to the first 200 of ``url``."""
    with httpx.Client(timeout=2) as http:
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before it was ready")
            try:
                if http.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def bare_start() -> float:
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([PYTHON, "-c", BARE, str(port)], cwd=ROOT)
    try:
        return until_ready(f"http://127.0.0.1:{port}/readyz", process, started)
    finally:
        stop(process)


def interpreter_start() -> float:
    started = time.perf_counter()
    subprocess.run([PYTHON, "-c", "pass"], check=True)
    return time.perf_counter() - started


async def create_jobs(url: str, token: str, jobs: int, clients: int = 16) -> int:
    remaining = iter(range(jobs))
    created = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:

        async def loop() -> None:
            nonlocal created
            for _ in remaining:
                body = (
                    await http.post(
                        "/graphql", json={"query": CREATE, "variables": {"input": {"assetId": ASSET}}}
                    )
                ).json()
                created += body["data"]["createJob"]["__typename"] == "Job"

        await asyncio.gather(*(loop() for _ in range(clients)))
    return created


def service_round(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wml-bench-startup-") as scratch:
        work = Path(scratch)
        spec = {"id": ASSET, "name": "Idle job", "local": {"command": ["sleep", "600"]}}
        port = free_port()
        env = environment(
            work,
            port,
            catalog_dir=catalog(work / "catalog", [spec]),
            max_running_jobs_per_consumer=1,
            max_queued_jobs_per_consumer=10 * jobs,
        )
        started = time.perf_counter()
        process = subprocess.Popen(
            [PYTHON, "-m", "wml.cli", "serve"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            cold = until_ready(f"{url}/readyz", process, started)
            time.sleep(1.0)
            rss_ready = proc_kib(process.pid, "VmRSS")
            token = create_token(env, assets=(ASSET,))
            created = asyncio.run(create_jobs(url, token, jobs))
            time.sleep(2.0)  # the supervisor's passes over the queue
            return {
                "cold_start_s": cold,
                "rss_ready_kib": rss_ready,
                "jobs_in_flight": created,
                "peak_kib": proc_kib(process.pid, "VmHWM"),
                "rss_after_kib": proc_kib(process.pid, "VmRSS"),
            }
        finally:
            stop(process)
            kill_leftover_workers(work / "data" / "jobs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs left in flight")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rounds = [
        measured_or_reason(f"round {i + 1}", lambda: service_round(args.jobs)) for i in range(args.repeats)
    ]
    done = [r for r in rounds if "not_measured" not in r]
    document = {
        "settings": {"jobs": args.jobs, "repeats": args.repeats, "worker": "sleep 600, one running slot"},
        "service": {
            key: spread([r[key] for r in done])
            for key in ("cold_start_s", "rss_ready_kib", "jobs_in_flight", "peak_kib", "rss_after_kib")
        },
        "bare": {
            "interpreter_start_s": spread([interpreter_start() for _ in range(args.repeats)]),
            "uvicorn_starlette_start_s": spread([bare_start() for _ in range(args.repeats)]),
        },
        "rounds": rounds,
        "target": "none set: figures users asked for",
    }
    path = write_result("startup", document)
    s, b = document["service"], document["bare"]
    if s["cold_start_s"]["runs"]:
        print(
            f"cold start to ready {s['cold_start_s']['median']:.2f} s ({s['cold_start_s']['min']:.2f}-"
            f"{s['cold_start_s']['max']:.2f}); bare uvicorn {b['uvicorn_starlette_start_s']['median']:.2f} s,"
            f" interpreter {b['interpreter_start_s']['median']:.3f} s; RSS ready"
            f" {s['rss_ready_kib']['median'] / 1024:.0f} MiB, peak with {args.jobs} jobs in flight"
            f" {s['peak_kib']['median'] / 1024:.0f} MiB"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
