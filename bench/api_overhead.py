"""API overhead: `job(id)` queries and `createJob` mutations per second over HTTP, against a bare endpoint.

What it compares, in one run and on one SQLite database:

- **GraphQL**: ``wml serve`` (a subprocess: uvicorn, one worker, the embedded default) answering
  ``query { job(id) { id state assetId createdAt } }`` and ``mutation { createJob(...) }``;
- **bare**: a plain Starlette app served by uvicorn the same way (a subprocess of this script,
  ``--serve-bare``), doing the same database work through :class:`core.store.Store` on the same database
  file: the token lookup (``grant_by_token_hash``) then ``get_job``; or the token lookup, ``get_asset``,
  ``count_jobs`` (the queue quota) and ``insert_job``. It returns the same fields as JSON.

Three scenarios: ``job_query`` (one query text, so the parsed-document cache always hits),
``job_query_uncached`` (every request a distinct text, an operation name with a counter, so every one is
parsed and validated: the bare side is the same ``GET``, it parses nothing either way) and ``create_job``
(16 clients creating jobs at once, concurrent writes on one database).

The difference is therefore the cost of the service's transport and domain layers (Strawberry parsing,
validation and execution, context and DataLoaders, input checks, event publication, metrics), not of the
database, with one addition the bare endpoint has no counterpart for: each ``createJob`` wakes the job
supervisor, whose pass reads the jobs it could start or must time out. The load generator is this
process: ``--clients`` concurrent loops on one ``httpx.AsyncClient`` (keep-alive), each sending its next
request when the previous one is answered. Both servers run at once and take turns: ``--seconds`` per
scenario and side are split into ``--rounds`` alternating rounds (each after a one-second warm-up), so a
change in the machine's load during the run hits both sides alike. Created jobs use an asset whose worker is
``sleep 600`` with one running slot, so they stay QUEUED and the supervisor does not run 1000s of
processes during the measurement.

Each round gives its own requests per second, ratio (GraphQL over the bare round next to it) and server
CPU per request (user + system time of the serving process over the round, divided by the requests
answered): the result holds min/median/max over the rounds; latency percentiles are over every request.

Usage: ``.venv/bin/python bench/api_overhead.py [--clients 16] [--seconds 8] [--rounds 4]``. Writes
``bench/results/api_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    ROOT,
    catalog,
    cpu_seconds,
    create_token,
    free_port,
    spread,
    stop,
    summary_ms,
    wait_until_up,
    wml_server,
    write_result,
)

ASSET = "idle-job"
JOB_QUERY = "query($id: ID!) { job(id: $id) { id state assetId createdAt } }"
CREATE = (
    "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename"
    " ... on Job { id state assetId createdAt } ... on Error { message code } } }"
)
CREATE_INPUT = {"input": {"assetId": ASSET, "inputs": [], "parameters": {}}}
SCENARIOS = ("job_query", "job_query_uncached", "create_job")


# -- the bare endpoint (runs in its own process) -------------------------------------------------------


def bare_app(database_url: str) -> Any:

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from core.auth import hash_token
    from core.models import Job
    from core.store import LIVE_STATES, Store
    from core.store.engine import create_engine

    store = Store(create_engine(database_url))

    async def grant(request: Request) -> Any:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        return await store.grants.grant_by_token_hash(hash_token(token))

    def fields(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "state": job.state.value,
            "assetId": job.asset_id,
            "createdAt": job.created_at.isoformat(),
        }

    async def get_job(request: Request) -> JSONResponse:
        if await grant(request) is None:
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        job = await store.jobs.get_job(request.path_params["id"])
        return JSONResponse({"job": fields(job) if job else None})

    async def create_job(request: Request) -> JSONResponse:
        body = await request.json()
        found = await grant(request)
        if found is None:
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        asset = await store.assets.get_asset(body["assetId"])
        assert asset is not None
        await store.jobs.count_jobs(LIVE_STATES, found.consumer_id)
        job = Job.queued(
            job_id=f"j_bare{time.perf_counter_ns():x}",
            consumer_id=found.consumer_id,
            grant_id=found.id,
            asset=asset,
        )
        await store.jobs.insert_job(job)
        return JSONResponse({"createJob": fields(job)})

    async def ready(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/jobs/{id}", get_job, methods=["GET"]),
            Route("/jobs", create_job, methods=["POST"]),
            Route("/readyz", ready),
        ]
    )


def serve_bare(database_url: str, port: int) -> None:
    import uvicorn

    uvicorn.run(bare_app(database_url), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- the load generator ---------------------------------------------------------------------------------


async def drive(
    base: str,
    token: str,
    clients: int,
    seconds: float,
    request: Callable[[httpx.AsyncClient], Awaitable[None]],
    pid: int,
) -> tuple[list[float], int, float]:
    """``clients`` closed loops for ``seconds`` after a 1 s warm-up: each answered request's latency, the
    errors, and the CPU seconds process ``pid`` (the server) used over the measured ``seconds``."""
    latencies: list[float] = []
    errors = 0
    cpu_at_start = [0.0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as http:
        warm_until = time.perf_counter() + 1.0
        stop_at = warm_until + seconds

        async def loop() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    await request(http)
                except (httpx.HTTPError, RuntimeError):
                    errors += 1
                    continue
                if now >= warm_until:
                    latencies.append(time.perf_counter() - now)

        async def warmed() -> None:
            await asyncio.sleep(max(0.0, warm_until - time.perf_counter()))
            cpu_at_start[0] = cpu_seconds(pid)

        await asyncio.gather(warmed(), *(loop() for _ in range(clients)))
        cpu = cpu_seconds(pid) - cpu_at_start[0]
    return latencies, errors, cpu


def checked(response: httpx.Response, key: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    body = response.json()
    data = body.get("data", body)
    if body.get("errors") or not data.get(key):
        raise RuntimeError(f"unexpected answer: {body}")
    result: dict[str, Any] = data[key]
    return result


def graphql_requests(job_id: str) -> dict[str, Callable[[httpx.AsyncClient], Awaitable[None]]]:
    distinct = iter(range(10**12))

    async def query(http: httpx.AsyncClient) -> None:
        checked(await http.post("/graphql", json={"query": JOB_QUERY, "variables": {"id": job_id}}), "job")

    async def uncached_query(http: httpx.AsyncClient) -> None:
        text = f"query Q{next(distinct)}" + JOB_QUERY.removeprefix("query")  # a text never seen before
        checked(await http.post("/graphql", json={"query": text, "variables": {"id": job_id}}), "job")

    async def mutation(http: httpx.AsyncClient) -> None:
        created = checked(
            await http.post("/graphql", json={"query": CREATE, "variables": CREATE_INPUT}), "createJob"
        )
        if created["__typename"] != "Job":
            raise RuntimeError(f"createJob refused: {created}")

    return {"job_query": query, "job_query_uncached": uncached_query, "create_job": mutation}


def bare_requests(job_id: str) -> dict[str, Callable[[httpx.AsyncClient], Awaitable[None]]]:
    async def query(http: httpx.AsyncClient) -> None:
        checked(await http.get(f"/jobs/{job_id}"), "job")

    async def mutation(http: httpx.AsyncClient) -> None:
        checked(await http.post("/jobs", json=CREATE_INPUT["input"]), "createJob")

    return {"job_query": query, "job_query_uncached": query, "create_job": mutation}


def kill_idle_workers(jobs_dir: Path) -> None:
    from tests.support.api import kill_leftover_workers

    kill_leftover_workers(jobs_dir)


def run(clients: int, seconds: float, rounds: int) -> dict[str, Any]:
    """Both servers up at once; GraphQL and bare take turns in ``rounds`` short rounds per scenario, so a
    change in the machine's load during the run hits both sides alike."""
    samples: dict[str, dict[str, list[float]]] = {
        side: {k: [] for k in SCENARIOS} for side in ("graphql", "bare")
    }
    per_round: dict[str, dict[str, list[dict[str, float]]]] = {
        side: {k: [] for k in SCENARIOS} for side in ("graphql", "bare")
    }
    errors = {side: dict.fromkeys(SCENARIOS, 0) for side in ("graphql", "bare")}
    with tempfile.TemporaryDirectory(prefix="wml-bench-api-") as scratch:
        work = Path(scratch)
        assets = catalog(
            work / "catalog", [{"id": ASSET, "name": "Idle job", "local": {"command": ["sleep", "600"]}}]
        )
        settings = {
            "catalog_dir": assets,
            "max_running_jobs_per_consumer": 1,
            "max_queued_jobs_per_consumer": 10**9,
        }
        database_url = f"sqlite+aiosqlite:///{work / 'data' / 'wml.db'}"
        try:
            with wml_server(work, **settings) as server:
                token = create_token(server.env, assets=(ASSET,))
                first = httpx.post(
                    f"{server.url}/graphql",
                    json={"query": CREATE, "variables": CREATE_INPUT},
                    headers={"Authorization": f"Bearer {token}"},
                )
                job_id = checked(first, "createJob")["id"]
                port = free_port()
                bare = subprocess.Popen(
                    [
                        PYTHON,
                        str(Path(__file__).resolve()),
                        "--serve-bare",
                        database_url,
                        "--port",
                        str(port),
                    ],
                    cwd=ROOT,
                )
                try:
                    base = f"http://127.0.0.1:{port}"
                    wait_until_up(f"{base}/readyz")
                    sides = {
                        "graphql": (server.url, graphql_requests(job_id), server.pid),
                        "bare": (base, bare_requests(job_id), bare.pid),
                    }
                    for kind in SCENARIOS:
                        for turn in range(rounds):
                            for side, (url, requests, pid) in sides.items():
                                print(f"-- {kind} round {turn + 1}/{rounds}: {side}", flush=True)
                                done, failed, cpu = asyncio.run(
                                    drive(url, token, clients, seconds / rounds, requests[kind], pid)
                                )
                                samples[side][kind] += done
                                errors[side][kind] += failed
                                per_round[side][kind].append(
                                    {
                                        "rps": len(done) / (seconds / rounds),
                                        "cpu_ms_per_request": cpu * 1000 / max(1, len(done) + failed),
                                    }
                                )
                finally:
                    stop(bare)
        finally:
            kill_idle_workers(work / "data" / "jobs")
    measured = {
        side: {
            kind: {
                "requests": len(samples[side][kind]),
                "errors": errors[side][kind],
                **summary_ms(samples[side][kind]),
                "rps": spread([r["rps"] for r in per_round[side][kind]]),
                "cpu_ms_per_request": spread([r["cpu_ms_per_request"] for r in per_round[side][kind]]),
            }
            for kind in SCENARIOS
        }
        for side in per_round
    }
    ratios = {
        kind: spread(
            [
                g["rps"] / b["rps"] if b["rps"] else 0.0
                for g, b in zip(per_round["graphql"][kind], per_round["bare"][kind], strict=True)
            ]
        )
        for kind in SCENARIOS
    }
    return {
        "settings": {
            "clients": clients,
            "seconds": seconds,
            "rounds": rounds,
            "client": "httpx.AsyncClient in the bench process",
        },
        "graphql": measured["graphql"],
        "bare": measured["bare"],
        "ratio_graphql_over_bare": ratios,
        "target": "median ratio (req/s) >= 0.5 for each scenario",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario and side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the seconds are split into")
    parser.add_argument("--serve-bare", metavar="DATABASE_URL", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.port)
        return 0
    document = run(args.clients, args.seconds, args.rounds)
    path = write_result("api_overhead", document)
    for kind in SCENARIOS:
        g, b = document["graphql"][kind], document["bare"][kind]
        print(
            f"{kind:>18}: graphql {g['rps']['median']:.0f} req/s p50 {g['p50_ms']:.1f} p99 {g['p99_ms']:.1f}"
            f" ms, {g['cpu_ms_per_request']['median']:.2f} ms CPU | bare {b['rps']['median']:.0f} req/s p50"
            f" {b['p50_ms']:.1f} p99 {b['p99_ms']:.1f} ms, {b['cpu_ms_per_request']['median']:.2f} ms CPU |"
            f" ratio {document['ratio_graphql_over_bare'][kind]['median']:.2f}"
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
