"""Job overhead: trivial jobs on the local backend, from `createJob` to COMPLETE, against a direct spawn.

``wml serve`` runs as a subprocess with the embedded default and its default settings (supervisor
``tick_interval`` 1 s, 4 running jobs per consumer; the local backend wakes on its runner's exit through a
pidfd). The asset's worker is ``true`` (no inputs, no outputs), so the job does nothing but go through
the service: QUEUED → INITIALIZING (stage-in) → RUNNING → COMPLETE (stage-out of the log).

The client (this process) keeps ``--concurrency`` jobs in flight (default 4, the per-consumer running
quota, so none waits for quota) until ``--jobs`` have completed, and follows every state change on one
``jobEvents`` websocket subscription; then the same with one job in flight (``--single-jobs``), where a
job's latency is all its own, with no queueing behind the others. Each variant runs in ``--rounds``
rounds on the same server: jobs per second, the median overhead and the CPU per job are taken per round
and stored as min/median/max over the rounds (the verdict uses the median); percentiles are over every
job. Times are wall-clock on the same machine:

- ``latency``: from sending ``createJob`` to the COMPLETE event's commit (its ``createdAt``);
- ``overhead``: latency minus the worker's own run time, taken as the median of spawning the same
  command directly with :func:`subprocess.run` ``--jobs`` times in the same run (the raw baseline);
- the phases between events (queued, initializing, running) show where the time goes;
- ``cpu_ms_per_job``: CPU time of the server process, and of its reaped children (runners and workers),
  per job: on a loaded machine the wall-clock figures mostly measure the wait for a core, this does not.

Usage: ``.venv/bin/python bench/job_overhead.py [--jobs 210] [--concurrency 4] [--single-jobs 60]
[--rounds 3]``. Writes
``bench/results/job_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import catalog, create_token, spread, summary_ms, wml_server, write_result
from tests.support.api import kill_leftover_workers
from tests.support.ws import connect

ASSET = "true-job"
COMMAND = ["true"]
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
CREATE = (
    "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename"
    " ... on Job { id } ... on Error { message code } } }"
)
EVENTS = "subscription { jobEvents { seq jobId state reason createdAt } }"


def direct_spawn(count: int) -> list[float]:
    """Seconds to spawn and reap the worker's command directly, ``count`` times."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(COMMAND, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time of the server process, and of its reaped children (the jobs' runners and workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "server": (int(fields[11]) + int(fields[12])) / tick,
        "runners_and_workers": (int(fields[13]) + int(fields[14])) / tick,
    }


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def run_jobs(url: str, token: str, jobs: int, concurrency: int) -> tuple[list[dict[str, Any]], float]:
    events: dict[str, dict[str, float]] = {}
    done: dict[str, asyncio.Event] = {}
    finals: dict[str, str] = {}
    async with (
        connect(url, token) as conn,
        httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as http,
    ):
        op = await conn.subscribe(EVENTS)

        async def follow() -> None:
            while True:
                event = (await op.next(timeout=600))["jobEvents"]
                events.setdefault(event["jobId"], {})[event["state"]] = stamp(event["createdAt"])
                if event["state"] in TERMINAL:
                    finals[event["jobId"]] = event["state"]
                    done.setdefault(event["jobId"], asyncio.Event()).set()

        reader = asyncio.create_task(follow())
        await asyncio.sleep(0.2)  # the subscription is registered before the first job exists
        records: list[dict[str, Any]] = []
        remaining = iter(range(jobs))

        async def worker() -> None:
            for _ in remaining:
                sent = time.time()
                body = (
                    await http.post(
                        "/graphql", json={"query": CREATE, "variables": {"input": {"assetId": ASSET}}}
                    )
                ).json()
                acked = time.time()
                job_id = body["data"]["createJob"]["id"]
                await done.setdefault(job_id, asyncio.Event()).wait()
                records.append({"id": job_id, "sent": sent, "acked": acked, "seen": time.time()})

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            reader.cancel()
        elapsed = time.perf_counter() - started
    for record in records:
        record["final"] = finals[record["id"]]
        record["events"] = events[record["id"]]
    return records, elapsed


def phases(records: list[dict[str, Any]], run_seconds: float) -> dict[str, Any]:
    complete = [r for r in records if r["final"] == "COMPLETE"]
    latency = [r["events"]["COMPLETE"] - r["sent"] for r in complete]

    def between(a: str, b: str) -> list[float]:
        return [r["events"][b] - r["events"][a] for r in complete if a in r["events"] and b in r["events"]]

    return {
        "completed": len(complete),
        "failed": len(records) - len(complete),
        "latency": summary_ms(latency),
        "overhead": summary_ms([x - run_seconds for x in latency]),
        "create_ack": summary_ms([r["acked"] - r["sent"] for r in complete]),
        "queued_to_initializing": summary_ms(between("QUEUED", "INITIALIZING")),
        "initializing_to_running": summary_ms(between("INITIALIZING", "RUNNING")),
        "running_to_complete": summary_ms(between("RUNNING", "COMPLETE")),
        "complete_delivery": summary_ms([r["seen"] - r["events"]["COMPLETE"] for r in complete]),
    }


def variant(
    url: str, pid: int, token: str, jobs: int, concurrency: int, rounds: int, run_seconds: float
) -> dict[str, Any]:
    """``jobs`` jobs, ``concurrency`` in flight, in ``rounds`` rounds: percentiles over all, spreads over
    the rounds."""
    everything: list[dict[str, Any]] = []
    per_round = []
    for turn in range(rounds):
        print(f"-- {concurrency} in flight, round {turn + 1}/{rounds}", flush=True)
        cpu_before = cpu_seconds(pid)
        records, elapsed = asyncio.run(run_jobs(url, token, jobs // rounds, concurrency))
        cpu_after = cpu_seconds(pid)
        everything += records
        figures = phases(records, run_seconds)
        per_round.append(
            {
                "jobs_per_second": figures["completed"] / elapsed,
                "overhead_p50_ms": figures["overhead"]["p50_ms"],
                **{
                    f"cpu_ms_per_job_{what}": (cpu_after[what] - cpu_before[what])
                    * 1000
                    / max(1, len(records))
                    for what in cpu_after
                },
            }
        )
    return {
        "concurrency": concurrency,
        "jobs": len(everything),
        **phases(everything, run_seconds),
        "rounds": per_round,
        "overhead_p50_ms": spread([r["overhead_p50_ms"] for r in per_round]),
        "jobs_per_second": spread([r["jobs_per_second"] for r in per_round]),
        "cpu_ms_per_job": {
            what: spread([r[f"cpu_ms_per_job_{what}"] for r in per_round])
            for what in ("server", "runners_and_workers")
        },
    }


def run(jobs: int, concurrency: int, rounds: int, single_jobs: int) -> dict[str, Any]:
    spawn = direct_spawn(jobs)
    run_seconds = statistics.median(spawn)
    with tempfile.TemporaryDirectory(prefix="wml-bench-jobs-") as scratch:
        work = Path(scratch)
        spec = {
            "id": ASSET,
            "name": "True job",
            "inputs": [],
            "outputs": [],
            "parameters": [],
            "local": {"command": COMMAND},
        }
        try:
            with wml_server(work, catalog_dir=catalog(work / "catalog", [spec])) as server:
                token = create_token(server.env, assets=(ASSET,))
                variants = {
                    str(concurrency): variant(
                        server.url, server.pid, token, jobs, concurrency, rounds, run_seconds
                    ),
                    "1": variant(server.url, server.pid, token, single_jobs, 1, rounds, run_seconds),
                }
        finally:
            kill_leftover_workers(work / "data" / "jobs")
    direct_rate = len(spawn) / sum(spawn)
    main_rate = variants[str(concurrency)]["jobs_per_second"]["median"]
    return {
        "settings": {
            "jobs": jobs,
            "concurrency": concurrency,
            "single_jobs": single_jobs,
            "rounds": rounds,
            "command": COMMAND,
            "server": "wml serve subprocess, default settings (tick_interval 1 s)",
        },
        "direct_spawn": {**summary_ms(spawn), "jobs_per_second": direct_rate},
        "in_flight": variants,
        "ratio_jobs_per_second_service_over_direct": main_rate / direct_rate,
        "target": f"median overhead < 50 ms and >= 50 jobs/s at {concurrency} in flight",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=210)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once")
    parser.add_argument("--single-jobs", type=int, default=60, help="jobs run one at a time afterwards")
    parser.add_argument("--rounds", type=int, default=3, help="rounds each variant's jobs are split into")
    args = parser.parse_args()
    document = run(args.jobs, args.concurrency, args.rounds, args.single_jobs)
    path = write_result("job_overhead", document)
    d = document["direct_spawn"]
    print(f"direct spawn p50 {d['p50_ms']:.2f} ms, {d['jobs_per_second']:.0f}/s")
    for flight, s in document["in_flight"].items():
        over, rate, cpu = s["overhead_p50_ms"], s["jobs_per_second"], s["cpu_ms_per_job"]
        print(
            f"{flight} in flight: {s['completed']}/{s['jobs']} complete; overhead p50 {over['median']:.0f} ms"
            f" ({over['min']:.0f}-{over['max']:.0f}), p90 {s['overhead']['p90_ms']:.0f} ms;"
            f" {rate['median']:.1f} jobs/s ({rate['min']:.1f}-{rate['max']:.1f}); CPU per job: server"
            f" {cpu['server']['median']:.1f} ms, runners and workers"
            f" {cpu['runners_and_workers']['median']:.1f} ms"
        )
        for phase in ("queued_to_initializing", "initializing_to_running", "running_to_complete"):
            print(f"  {phase}: p50 {s[phase]['p50_ms']:.0f} ms p90 {s[phase]['p90_ms']:.0f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
