"""Two revisions of the service under one workload in the same run, taking turns: is a change worth it?

Made for measure-or-remove decisions (does a hand-written replacement of a library feature pay for its
code?), where the difference is a few percent and a shared machine's load drifts by more than that
between two runs. Each revision is exported with ``git archive`` into a scratch directory (``.`` is the
working tree, uncommitted changes included) and served from there as a ``wml serve`` subprocess with this
checkout's virtualenv (``python -m`` puts the exported tree first on the path; the local backend's runner
is that tree's file too), each on its own scratch data, both up at once. After one unrecorded warm-up
round each, the workload takes turns on them for ``--rounds`` rounds, so load drift hits both alike.

Workloads:

- ``jobs``: :mod:`bench.job_overhead`'s trivial ``true`` jobs on the local backend, 4 in flight: latency
  from sending ``createJob`` to the COMPLETE event's commit, per job; CPU of the server, and of its reaped
  children (the runners and their workers), per job;
- ``query`` and ``create``: :mod:`bench.api_overhead`'s ``job(id)`` query or ``createJob`` mutation from
  16 closed-loop clients: latency per request, requests per second, server CPU per request.

For each figure and revision it prints the median over every sample (per job or request; CPU and req/s
are per round) with the smallest and largest round median, and the ratio of the two medians (second
revision over first).

Usage: ``.venv/bin/python bench/revisions.py BASE HEAD [--workload jobs|query|create] [--rounds 10]
[--per-round 40] [--seconds 2] [--json FILE]``, e.g. ``bench/revisions.py HEAD .`` for what is not
committed yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import api_overhead, job_overhead
from bench.common import ROOT, Server, catalog, create_token, machine, wml_server
from tests.support.api import kill_leftover_workers

Request = Callable[[httpx.AsyncClient], Awaitable[None]]


def export(revision: str, into: Path) -> tuple[Path, str]:
    """The source tree of ``revision`` (``.``: this working tree as it is) and how to name it."""
    if revision == ".":
        return ROOT, "working tree"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", f"{revision}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", commit], cwd=ROOT, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise RuntimeError(f"git archive {commit} failed")
    return into, commit


def cpu_seconds(server: Server) -> dict[str, float]:
    return job_overhead.cpu_seconds(server.pid)


# -- one round of a workload ------------------------------------------------------------------------


def jobs_round(server: Server, token: str, jobs: int) -> dict[str, Any]:
    before = cpu_seconds(server)
    records, _ = asyncio.run(job_overhead.run_jobs(server.url, token, jobs, 4))
    after = cpu_seconds(server)
    done = [r for r in records if r["final"] == "COMPLETE"]
    if len(done) != len(records):
        raise RuntimeError(f"{len(records) - len(done)} of {len(records)} jobs did not complete")
    return {
        "latency_ms": [(r["events"]["COMPLETE"] - r["sent"]) * 1000 for r in done],
        "server_cpu_ms": (after["server"] - before["server"]) * 1000 / len(done),
        "children_cpu_ms": (after["runners_and_workers"] - before["runners_and_workers"]) * 1000 / len(done),
    }


async def closed_loop(url: str, token: str, seconds: float, request: Request) -> list[float]:
    """16 clients, each sending its next request when the previous one is answered; the latencies."""
    latencies: list[float] = []
    clients = 16
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as http:
        stop_at = time.perf_counter() + seconds

        async def loop() -> None:
            while (now := time.perf_counter()) < stop_at:
                await request(http)
                latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies


def requests_round(server: Server, token: str, seconds: float, request: Request) -> dict[str, Any]:
    before = cpu_seconds(server)
    latencies = asyncio.run(closed_loop(server.url, token, seconds, request))
    after = cpu_seconds(server)
    return {
        "latency_ms": [x * 1000 for x in latencies],
        "rps": len(latencies) / seconds,
        "server_cpu_ms": (after["server"] - before["server"]) * 1000 / max(1, len(latencies)),
    }


# -- the run ----------------------------------------------------------------------------------------


def settings_for(workload: str, work: Path) -> dict[str, Any]:
    if workload == "jobs":
        spec = {"id": job_overhead.ASSET, "name": "True job", "local": {"command": job_overhead.COMMAND}}
        spec |= {"inputs": [], "outputs": [], "parameters": []}
        return {"catalog_dir": catalog(work / "catalog", [spec])}
    idle = {"id": api_overhead.ASSET, "name": "Idle job", "local": {"command": ["sleep", "600"]}}
    return {
        "catalog_dir": catalog(work / "catalog", [idle]),
        "max_running_jobs_per_consumer": 1,
        "max_queued_jobs_per_consumer": 10**9,
    }


def prepare(workload: str, server: Server, tree: Path, per_round: int, seconds: float) -> Callable[[], Any]:
    """The consumer's token on this server, and one round of the workload against it."""
    asset = job_overhead.ASSET if workload == "jobs" else api_overhead.ASSET
    token = create_token(server.env, assets=(asset,), tree=tree)
    if workload == "jobs":
        return lambda: jobs_round(server, token, per_round)
    first = httpx.post(
        f"{server.url}/graphql",
        json={"query": api_overhead.CREATE, "variables": api_overhead.CREATE_INPUT},
        headers={"Authorization": f"Bearer {token}"},
    )
    job_id = api_overhead.checked(first, "createJob")["id"]
    request = api_overhead.graphql_requests(job_id)["job_query" if workload == "query" else "create_job"]
    return lambda: requests_round(server, token, seconds, request)


def run(revisions: list[str], workload: str, rounds: int, per_round: int, seconds: float) -> dict[str, Any]:
    samples: list[list[dict[str, Any]]] = [[], []]
    names: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="wml-bench-revisions-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        rounds_of: list[Callable[[], Any]] = []
        for side, revision in enumerate(revisions):
            tree, name = export(revision, Path(scratch) / f"tree{side}")
            names.append(name)
            work = Path(scratch) / f"work{side}"
            stack.callback(kill_leftover_workers, work / "data" / "jobs")
            server = stack.enter_context(wml_server(work, tree=tree, **settings_for(workload, work)))
            rounds_of.append(prepare(workload, server, tree, per_round, seconds))
        for one_round in rounds_of:
            one_round()  # warm-up, not recorded
        for turn in range(rounds):
            for side in (0, 1) if turn % 2 == 0 else (1, 0):
                print(f"-- round {turn + 1}/{rounds}: {names[side]}", flush=True)
                samples[side].append(rounds_of[side]())
    sides = [summarize(s) for s in samples]
    ratios = {
        key: sides[1][key]["median"] / sides[0][key]["median"] for key in sides[0] if sides[0][key]["median"]
    }
    return {
        "workload": workload,
        "settings": {"rounds": rounds, "jobs_per_round": per_round, "seconds_per_round": seconds},
        "machine": machine(),
        "revisions": [
            {"revision": revision, "name": name, **side}
            for revision, name, side in zip(revisions, names, sides, strict=True)
        ],
        "ratio_second_over_first": ratios,
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per figure: the median over every sample, and the smallest and largest round median."""
    figures: dict[str, dict[str, float]] = {}
    for key in rounds[0]:
        per_round = [r[key] if isinstance(r[key], list) else [r[key]] for r in rounds]
        medians = [statistics.median(values) for values in per_round]
        everything = [value for values in per_round for value in values]
        figures[key] = {"median": statistics.median(everything), "min": min(medians), "max": max(medians)}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "revisions", nargs=2, metavar="REVISION", help="a git revision, or . for the working tree"
    )
    parser.add_argument("--workload", choices=("jobs", "query", "create"), default="jobs")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per revision, taking turns")
    parser.add_argument("--per-round", type=int, default=40, help="jobs per round (jobs)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per round (query, create)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    document = run(args.revisions, args.workload, args.rounds, args.per_round, args.seconds)
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    first, second = document["revisions"]
    print(f"{args.workload}: {args.rounds} rounds each; median (smallest..largest round median)")
    for key, ratio in document["ratio_second_over_first"].items():
        a, b = first[key], second[key]
        print(
            f"  {key:>16}: {first['name']} {a['median']:.2f} ({a['min']:.2f}..{a['max']:.2f}) | "
            f"{second['name']} {b['median']:.2f} ({b['min']:.2f}..{b['max']:.2f}) | ratio {ratio:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
