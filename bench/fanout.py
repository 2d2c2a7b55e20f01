"""Subscription fan-out: N websocket subscribers on `jobEvents`, against a bare websockets broadcast.

For each subscriber count (``--subscribers``, default 1000):

1. ``wml serve`` runs as a subprocess (embedded default; an asset whose worker is ``sleep 600``, one
   running slot, so created jobs mostly stay QUEUED and emit one event each);
2. client subprocesses (this script, ``--client``, one per ``--per-process`` subscribers, each with its
   open-files limit raised to the hard limit) open N websocket connections (``graphql-transport-ws``,
   the consumer's token in ``connection_init``), each subscribed to ``jobEvents`` (all of the caller's
   jobs, from now on), and say READY;
3. the server's VmRSS before the clients connect and once they are all subscribed and idle gives the
   memory per idle subscriber;
4. the bench creates ``--events`` jobs, 0.5 s apart; every subscriber receives every job's events.
   The delivery latency is the client's receive time minus the event's ``createdAt`` (stamped by the
   server in the transaction that commits the event; same machine, same clock). "To every subscriber" is
   the latest delivery of an event over all N subscribers.

The events are taken in ``--rounds`` rounds (consecutive thirds by default): each round's p99 to every
subscriber (with 10 events a round, its slowest event) and p99 per delivery (N x 10 samples) are stored as
min/median/max over the rounds, and the verdict uses the median; the pooled figures over every event are
kept too. A size or side that cannot be measured (a client that gives up connecting, a server that falls
over) is recorded as ``not_measured`` with the reason, and the other sizes still run.

The raw baseline is the same with a bare ``websockets`` server (a subprocess, ``--bare-server``; no
per-message compression, like the service) that broadcasts a message of the same shape (a ``next``
message carrying a jobEvents payload stamped with the time of the broadcast) to the same N connections,
0.5 s apart.

``--py-spy FILE`` records the server's stacks (py-spy, collapsed format) while the events are delivered,
one file per subscriber count (``FILE`` gets the count as a suffix).

Usage: ``.venv/bin/python bench/fanout.py [--subscribers 1000,5000,10000] [--events 30] [--rounds 3]``. Writes
``bench/results/fanout.json``; each run records how long it took (``seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx

if TYPE_CHECKING:
    from websockets.typing import Subprotocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    ROOT,
    catalog,
    create_token,
    free_port,
    measured_or_reason,
    proc_kib,
    spread,
    stop,
    summary_ms,
    wml_server,
    write_result,
)

ASSET = "idle-job"
SUBSCRIPTION = "subscription { jobEvents { seq jobId state reason createdAt } }"
CREATE = "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename ... on Job { id } } }"
INTERVAL = 0.5
CONNECT_AT_ONCE = 100  # handshakes in flight per client process
PER_PROCESS = 2500  # subscribers per client process
ROUNDS = 3
SUBPROTOCOL = cast("Subprotocol", "graphql-transport-ws")


# -- the clients (their own process) --------------------------------------------------------------------


async def subscriber(
    url: str, token: str | None, gate: asyncio.Semaphore, ready: list[int], log: list[Any]
) -> None:
    import websockets

    async with gate:
        ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], open_timeout=120, max_queue=None)
        if token is not None:
            await ws.send(
                json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
            )
            while json.loads(await ws.recv())["type"] != "connection_ack":
                pass
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION}}))
    ready[0] += 1
    async for raw in ws:
        log.append((time.time(), raw))  # parsed after the run, outside the measured path


def raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def clients(url: str, token: str | None, count: int) -> None:
    raise_open_files_limit()
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    ready = [0]
    logs: list[list[Any]] = [[] for _ in range(count)]
    tasks = [asyncio.create_task(subscriber(url, token, gate, ready, log)) for log in logs]
    while ready[0] < count:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise RuntimeError(f"{len(failed)} subscribers failed: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # STOP
    for task in tasks:
        task.cancel()
    deliveries = []
    for log in logs:
        for received, raw in log:
            message = json.loads(raw)
            if message.get("type") != "next":
                continue
            event = message["payload"]["data"]["jobEvents"]
            deliveries.append((event["seq"], event["createdAt"], received))
    print(json.dumps(deliveries), flush=True)


# -- the bare baseline server (its own process) ----------------------------------------------------------


async def bare_server(port: int) -> None:
    from websockets.asyncio.server import broadcast, serve

    async def hold(ws: Any) -> None:
        await ws.wait_closed()

    # Without per-message compression, as the service (wml/server.py) serves websockets.
    async with serve(
        hold, "127.0.0.1", port, subprotocols=[SUBPROTOCOL], max_queue=None, compression=None
    ) as server:
        print("READY", flush=True)
        seq = 0
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "BROADCAST":
            seq += 1
            event = {
                "seq": seq,
                "jobId": "j_bare",
                "state": "QUEUED",
                "reason": None,
                "createdAt": datetime.now(UTC).isoformat(),
            }
            message = {"id": "1", "type": "next", "payload": {"data": {"jobEvents": event}}}
            broadcast(server.connections, json.dumps(message))


# -- the orchestration ------------------------------------------------------------------------------------


def start_clients(
    ws_url: str, token: str | None, count: int, per_process: int
) -> list[subprocess.Popen[str]]:
    """Client processes holding ``count`` subscribers between them, once all of them are subscribed."""
    shares = [per_process] * (count // per_process) + ([count % per_process] if count % per_process else [])
    processes = []
    for share in shares:
        command = [PYTHON, str(Path(__file__).resolve()), "--client", ws_url, token or "-", str(share)]
        processes.append(
            subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != "READY":
            for other in processes:
                stop(other)
            raise RuntimeError(f"the clients did not get ready: {line!r}")
    return processes


def finish_clients(processes: list[subprocess.Popen[str]]) -> list[tuple[int, str, float]]:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("STOP\n")
        process.stdin.flush()
    deliveries: list[tuple[int, str, float]] = []
    for process in processes:
        assert process.stdout is not None
        deliveries.extend(
            (seq, created, received) for seq, created, received in json.loads(process.stdout.readline())
        )
        process.wait(60)
    return deliveries


def profiler(pid: int, seconds: float, output: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` for ``seconds`` into ``output`` (collapsed stacks), when asked for."""
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if output is None:
        return None
    command = [py_spy, "record", "-p", str(pid), "-d", str(math.ceil(seconds)), "-r", "100"]
    command += ["-f", "raw", "-o", output, "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def latencies(deliveries: list[tuple[int, str, float]], subscribers: int, rounds: int) -> dict[str, Any]:
    by_event: dict[int, list[float]] = {}
    for seq, created, received in deliveries:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        by_event.setdefault(seq, []).append(received - stamp)
    every = [value for values in by_event.values() for value in values]
    complete = [values for values in by_event.values() if len(values) == subscribers]
    # Consecutive events make a round: its p99 to every subscriber and per delivery.
    seqs = sorted(by_event)
    n = len(seqs)
    chunks = [seqs[i * n // rounds : (i + 1) * n // rounds] for i in range(rounds)]
    per_round = [
        {
            "to_every_p99_ms": summary_ms([max(by_event[q]) for q in chunk])["p99_ms"],
            "per_delivery_p99_ms": summary_ms([v for q in chunk for v in by_event[q]])["p99_ms"],
        }
        for chunk in chunks
        if chunk
    ]
    return {
        "events": len(by_event),
        "events_delivered_to_all": len(complete),
        "deliveries": len(every),
        "per_delivery": summary_ms(every),
        "to_every_subscriber": summary_ms([max(values) for values in by_event.values()]),
        "rounds": per_round,
        "to_every_p99_ms": spread([r["to_every_p99_ms"] for r in per_round]),
        "per_delivery_p99_ms": spread([r["per_delivery_p99_ms"] for r in per_round]),
    }


def measure_service(
    subscribers: int,
    events: int,
    overrides: dict[str, str],
    per_process: int,
    profile: str | None,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wml-bench-fanout-") as scratch:
        work = Path(scratch)
        spec = {"id": ASSET, "name": "Idle job", "local": {"command": ["sleep", "600"]}}
        settings = {
            "catalog_dir": catalog(work / "catalog", [spec]),
            "max_running_jobs_per_consumer": 1,
            "max_queued_jobs_per_consumer": 10**6,
            "max_connections_per_token": subscribers,  # every subscriber uses the one token
            **overrides,
        }
        try:
            with wml_server(work, **settings) as server:
                token = create_token(server.env, assets=(ASSET,))
                time.sleep(1.0)
                rss_before = proc_kib(server.pid, "VmRSS")
                started = time.perf_counter()
                clients_processes = start_clients(
                    server.url.replace("http://", "ws://") + "/graphql", token, subscribers, per_process
                )
                connect_seconds = time.perf_counter() - started
                try:
                    time.sleep(2.0)
                    rss_idle = proc_kib(server.pid, "VmRSS")
                    headers = {"Authorization": f"Bearer {token}"}
                    variables = {"input": {"assetId": ASSET}}
                    spy = profiler(server.pid, events * INTERVAL + 3.0, profile)
                    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                        for _ in range(events):
                            http.post(
                                "/graphql", json={"query": CREATE, "variables": variables}
                            ).raise_for_status()
                            time.sleep(INTERVAL)
                    time.sleep(3.0)
                    rss_after = proc_kib(server.pid, "VmRSS")
                    if spy is not None:
                        spy.wait(60)
                finally:
                    deliveries = finish_clients(clients_processes)
        finally:
            from tests.support.api import kill_leftover_workers

            kill_leftover_workers(work / "data" / "jobs")
    return {
        "connect_seconds": connect_seconds,
        "server_rss_before_kib": rss_before,
        "server_rss_idle_kib": rss_idle,
        "server_rss_after_events_kib": rss_after,
        "kib_per_idle_subscriber": (rss_idle - rss_before) / subscribers,
        **latencies(deliveries, subscribers, rounds),
    }


def measure_bare(subscribers: int, events: int, per_process: int, rounds: int = ROUNDS) -> dict[str, Any]:
    port = free_port()
    command = [PYTHON, str(Path(__file__).resolve()), "--bare-server", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        if server.stdout.readline().strip() != "READY":
            raise RuntimeError("the bare server did not start")
        rss_before = proc_kib(server.pid, "VmRSS")
        started = time.perf_counter()
        clients_processes = start_clients(f"ws://127.0.0.1:{port}", None, subscribers, per_process)
        connect_seconds = time.perf_counter() - started
        try:
            time.sleep(2.0)
            rss_idle = proc_kib(server.pid, "VmRSS")
            for _ in range(events):
                server.stdin.write("BROADCAST\n")
                server.stdin.flush()
                time.sleep(INTERVAL)
            time.sleep(3.0)
        finally:
            deliveries = finish_clients(clients_processes)
        server.stdin.write("STOP\n")
        server.stdin.flush()
    finally:
        stop(server)
    return {
        "connect_seconds": connect_seconds,
        "server_rss_before_kib": rss_before,
        "server_rss_idle_kib": rss_idle,
        "kib_per_idle_subscriber": (rss_idle - rss_before) / subscribers,
        **latencies(deliveries, subscribers, rounds),
    }


def run(
    counts: list[int],
    events: int,
    overrides: dict[str, str],
    per_process: int,
    profile: str | None,
    rounds: int = ROUNDS,
) -> dict[str, Any]:
    runs = []
    for count in counts:
        started = time.perf_counter()
        print(f"-- {count} subscribers: service", flush=True)
        spy_output = f"{profile}.{count}" if profile else None
        service = measured_or_reason(
            f"{count} subscribers, service",
            partial(measure_service, count, events, overrides, per_process, spy_output, rounds),
        )
        print(f"-- {count} subscribers: bare websockets", flush=True)
        bare = measured_or_reason(
            f"{count} subscribers, bare", partial(measure_bare, count, events, per_process, rounds)
        )
        entry: dict[str, Any] = {"subscribers": count, "service": service, "bare": bare}
        if "not_measured" not in service and "not_measured" not in bare:
            s_p99, b_p99 = service["to_every_p99_ms"]["median"], bare["to_every_p99_ms"]["median"]
            entry["ratio_p99_to_every_service_over_bare"] = s_p99 / b_p99 if b_p99 else 0.0
        entry["seconds"] = time.perf_counter() - started
        runs.append(entry)
    return {
        "settings": {
            "events": events,
            "rounds": rounds,
            "interval_s": INTERVAL,
            "clients": f"subprocesses of this script (websockets asyncio client), {per_process} each",
            "server_settings": overrides,
        },
        "runs": runs,
        "target": "p99 < 500 ms to every subscriber (median over the rounds), < 50 KB per idle subscriber"
        " (issue 9: at 10,000 subscribers)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1000", help="comma-separated subscriber counts")
    parser.add_argument("--events", type=int, default=30, help="jobs created (events) per count")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds the events are split into")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a server setting (e.g. stream_recheck_interval=60), repeatable",
    )
    parser.add_argument("--output", default="fanout", help="result name under bench/results/")
    parser.add_argument("--per-process", type=int, default=PER_PROCESS, help="subscribers per client process")
    parser.add_argument("--py-spy", metavar="FILE", help="record the server while events are delivered")
    parser.add_argument("--client", nargs=3, metavar=("URL", "TOKEN", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client or args.bare_server:
        # Helper processes have nothing to write when stopped: SIGTERM ends them at once, with no
        # SystemExit raised inside a websockets task and printed as "Task exception was never retrieved".
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.client:
        url, token, count = args.client
        asyncio.run(clients(url, None if token == "-" else token, int(count)))
        return 0
    if args.bare_server:
        asyncio.run(bare_server(args.bare_server))
        return 0
    overrides = dict(item.split("=", 1) for item in args.set)
    counts = [int(c) for c in args.subscribers.split(",")]
    document = run(counts, args.events, overrides, args.per_process, args.py_spy, args.rounds)
    path = write_result(args.output, document)
    for entry in document["runs"]:
        for side in ("service", "bare"):
            r = entry[side]
            if "not_measured" in r:
                print(f"{entry['subscribers']:>6} {side:>7}: not measured: {r['not_measured']}")
                continue
            every, delivery = r["to_every_p99_ms"], r["per_delivery"]
            print(
                f"{entry['subscribers']:>6} {side:>7}: to every subscriber p99 median {every['median']:.0f}"
                f" ({every['min']:.0f}-{every['max']:.0f}) ms, per delivery p50 {delivery['p50_ms']:.0f}"
                f" p99 {delivery['p99_ms']:.0f} ms, {r['kib_per_idle_subscriber']:.1f} KiB/subscriber,"
                f" {r['events_delivered_to_all']}/{r['events']} events to all,"
                f" connect {r['connect_seconds']:.1f} s"
            )
        print(f"{entry['subscribers']:>6} took {entry['seconds']:.0f} s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
