"""Replicas: jobs per second and subscription delivery with one, two and three `wml serve` replicas on one
PostgreSQL database, against one replica in the same run.

Each configuration gets a fresh database on one throwaway PostgreSQL server (tests/support/postgres.py, the
test suite's), a shared file store, and N `wml serve` subprocesses (local backend, each its own data
directory; `--capacity` jobs at once per replica; the per-consumer running quota raised out of the way).
The client (this process) keeps `--concurrency` jobs in flight, sending each `createJob` to the replicas in
turn, until `--jobs` have completed; the worker is `true`. One `jobEvents` subscriber per replica follows
every event; delivery is the time from an event's commit (`createdAt`) to its arrival at each subscriber,
so with N replicas it includes the cross-replica LISTEN/NOTIFY path.

Each configuration runs the workload ``--repeats`` times (3) on the same replicas: jobs per second and the
delivery p50/p99 of each repeat are stored as min/median/max over the repeats (the verdict uses the
median; the delivery percentiles pool ~8 deliveries per job per replica, several hundred per repeat). A
configuration that cannot be measured is recorded as ``not_measured`` with the reason.

The raw baseline is the one-replica run of the same run (ratio = N replicas / one replica). On 2 cores the
replicas, PostgreSQL and the client share the machine: more replicas cannot add cores here, so the ratio
shows what coordination costs (a shared scheduling lock, leases), not how far the service scales out on
more machines.

Usage: ``.venv/bin/python bench/replicas.py [--jobs 120] [--concurrency 8] [--capacity 4] [--repeats 3]``.
Writes ``bench/results/replicas.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    Server,
    catalog,
    create_token,
    measured_or_reason,
    spread,
    summary_ms,
    wml_server,
    write_result,
)
from tests.support.api import kill_leftover_workers
from tests.support.postgres import PostgresServer, postgres_server
from tests.support.ws import connect

ASSET = "true-job"
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}
CREATE = (
    "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename"
    " ... on Job { id } ... on Error { message code } } }"
)
EVENTS = "subscription { jobEvents { seq jobId state createdAt } }"


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def replicas(work: Path, count: int, database_url: str, capacity: int) -> Iterator[list[Server]]:
    spec = {"id": ASSET, "name": "True job", "inputs": [], "outputs": [], "parameters": [],
            "local": {"command": ["true"]}}  # fmt: skip
    settings = {
        "database_url": database_url,
        "storage": f"file://{work / 'files'}",
        "catalog_dir": catalog(work / "catalog", [spec]),
        "backend_capacity": capacity,
        "max_running_jobs_per_consumer": 1000,
        "max_queued_jobs_per_consumer": 1000,
    }
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(count) as pool:
        # Started together, as a rollout does (each `wml_server` waits for its /readyz).
        starting = [
            pool.submit(lambda i=i: stack.enter_context(wml_server(work, data=f"r{i}", **settings)))
            for i in range(count)
        ]
        servers = [f.result() for f in starting]
        try:
            yield servers
        finally:
            for i in range(count):
                kill_leftover_workers(work / f"r{i}" / "jobs")


async def run_jobs(servers: list[Server], token: str, jobs: int, concurrency: int) -> dict[str, Any]:
    delivery: list[float] = []
    done: dict[str, asyncio.Event] = {}
    finals: dict[str, str] = {}
    headers = {"Authorization": f"Bearer {token}"}
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=s.url, timeout=60, headers=headers))
            for s in servers
        ]
        ops = [
            await (await stack.enter_async_context(connect(s.url, token))).subscribe(EVENTS) for s in servers
        ]

        async def follow(op: Any) -> None:
            while True:
                event = (await op.next(timeout=600))["jobEvents"]
                delivery.append(time.time() - stamp(event["createdAt"]))
                if event["state"] in TERMINAL:
                    finals[event["jobId"]] = event["state"]
                    done.setdefault(event["jobId"], asyncio.Event()).set()

        readers = [asyncio.create_task(follow(op)) for op in ops]
        await asyncio.sleep(0.3)
        sent = iter(range(jobs))

        async def worker() -> None:
            for n in sent:
                resp = await clients[n % len(clients)].post(
                    "/graphql", json={"query": CREATE, "variables": {"input": {"assetId": ASSET}}}
                )
                job_id = resp.json()["data"]["createJob"]["id"]
                await done.setdefault(job_id, asyncio.Event()).wait()

        started = time.perf_counter()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            await asyncio.sleep(0.5)  # the last events reach the other subscribers too
        finally:
            for reader in readers:
                reader.cancel()
        elapsed = time.perf_counter() - started
    complete = sum(1 for s in finals.values() if s == "COMPLETE")
    return {
        "completed": complete,
        "failed": len(finals) - complete,
        "elapsed_s": elapsed,
        "jobs_per_second": complete / elapsed,
        "delivery": summary_ms(delivery),
        "events_delivered": len(delivery),
    }


async def fresh_database(pg: PostgresServer) -> str:
    return pg.url(await pg.create_database(empty=True))


def configuration(
    pg: PostgresServer, count: int, jobs: int, concurrency: int, capacity: int, repeats: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"wml-bench-replicas-{count}-") as scratch:
        work = Path(scratch)
        url = asyncio.run(fresh_database(pg))
        with replicas(work, count, url, capacity) as servers:
            token = create_token(servers[0].env, assets=(ASSET,))
            runs = [asyncio.run(run_jobs(servers, token, jobs, concurrency)) for _ in range(repeats)]
    return {
        "runs": runs,
        "completed": sum(r["completed"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "jobs_sent": jobs * repeats,
        "jobs_per_second": spread([r["jobs_per_second"] for r in runs]),
        "delivery_p50_ms": spread([r["delivery"]["p50_ms"] for r in runs]),
        "delivery_p99_ms": spread([r["delivery"]["p99_ms"] for r in runs]),
        "events_delivered": sum(r["events_delivered"] for r in runs),
    }


def run(jobs: int, concurrency: int, capacity: int, counts: list[int], repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for pg in postgres_server():
        for count in counts:
            results[str(count)] = measured_or_reason(
                f"{count} replica(s)", partial(configuration, pg, count, jobs, concurrency, capacity, repeats)
            )
            print(f"{count} replica(s): {results[str(count)]}", flush=True)
    one = results.get("1", {})
    ratios = {}
    if "jobs_per_second" in one:
        for n, r in results.items():
            if "jobs_per_second" in r:
                ratios[n] = {
                    "jobs_per_second": r["jobs_per_second"]["median"] / one["jobs_per_second"]["median"],
                    "delivery_p99": r["delivery_p99_ms"]["median"] / one["delivery_p99_ms"]["median"],
                }
    return {
        "settings": {
            "jobs": jobs,
            "concurrency": concurrency,
            "capacity_per_replica": capacity,
            "repeats": repeats,
            "worker": "true",
            "server": "wml serve subprocesses on one PostgreSQL database, local backend, default settings",
        },
        "replicas": results,
        "ratios_over_one_replica": ratios,
        "target": "no job lost; N replicas within 0.5x of one replica's jobs/s (medians) on one machine",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8, help="jobs in flight at once")
    parser.add_argument("--capacity", type=int, default=4, help="jobs each replica runs at once")
    parser.add_argument("--replicas", default="1,2,3", help="the replica counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the workload per replica count")
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    document = run(args.jobs, args.concurrency, args.capacity, counts, args.repeats)
    path = write_result("replicas", document)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
