"""Subscription fan-out: N websocket subscribers on `jobEvents`, against a bare websockets broadcast.

For each subscriber count (``--subscribers``, default 1000):

1. ``wml serve`` runs as a subprocess (embedded default; an asset whose worker is ``sleep 600``, one
   running slot, so created jobs mostly stay QUEUED and emit one event each);
2. a client subprocess (this script, ``--client``) opens N websocket connections
   (``graphql-transport-ws``, the consumer's token in ``connection_init``), each subscribed to
   ``jobEvents`` (all of the caller's jobs, from now on), and says READY;
3. the server's VmRSS before the clients connect and once they are all subscribed and idle gives the
   memory per idle subscriber;
4. the bench creates ``--events`` jobs, 0.5 s apart; every subscriber receives every job's events.
   The delivery latency is the client's receive time minus the event's ``createdAt`` (stamped by the
   server in the transaction that commits the event; same machine, same clock). "To every subscriber" is
   the latest delivery of an event over all N subscribers.

The raw baseline is the same with a bare ``websockets`` server (a subprocess, ``--bare-server``) that
broadcasts a message of the same shape (a ``next`` message carrying a jobEvents payload stamped with the
time of the broadcast) to the same N connections, 0.5 s apart.

Usage: ``.venv/bin/python bench/fanout.py [--subscribers 1000,5000] [--events 10]``. Writes
``bench/results/fanout.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PYTHON,
    ROOT,
    catalog,
    create_token,
    free_port,
    proc_kib,
    stop,
    summary_ms,
    wml_server,
    write_result,
)

ASSET = "idle-job"
SUBSCRIPTION = "subscription { jobEvents { seq jobId state reason createdAt } }"
CREATE = "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename ... on Job { id } } }"
INTERVAL = 0.5
CONNECT_AT_ONCE = 100


# -- the clients (their own process) --------------------------------------------------------------------


async def subscriber(
    url: str, token: str | None, gate: asyncio.Semaphore, ready: list[int], log: list[Any]
) -> None:
    import websockets

    async with gate:
        ws = await websockets.connect(
            url, subprotocols=["graphql-transport-ws"], open_timeout=120, max_queue=None
        )
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


async def clients(url: str, token: str | None, count: int) -> None:
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

    async with serve(
        hold, "127.0.0.1", port, subprotocols=["graphql-transport-ws"], max_queue=None
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


def start_clients(ws_url: str, token: str | None, count: int) -> subprocess.Popen[str]:
    command = [PYTHON, str(Path(__file__).resolve()), "--client", ws_url, token or "-", str(count)]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "READY":
        stop(process)
        raise RuntimeError(f"the clients did not get ready: {line!r}")
    return process


def finish_clients(process: subprocess.Popen[str]) -> list[tuple[int, str, float]]:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("STOP\n")
    process.stdin.flush()
    deliveries = json.loads(process.stdout.readline())
    process.wait(60)
    return [tuple(d) for d in deliveries]  # type: ignore[misc]


def latencies(deliveries: list[tuple[int, str, float]], subscribers: int) -> dict[str, Any]:
    by_event: dict[int, list[float]] = {}
    for seq, created, received in deliveries:
        stamp = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        by_event.setdefault(seq, []).append(received - stamp)
    every = [value for values in by_event.values() for value in values]
    complete = [values for values in by_event.values() if len(values) == subscribers]
    return {
        "events": len(by_event),
        "events_delivered_to_all": len(complete),
        "per_delivery": summary_ms(every),
        "to_every_subscriber": summary_ms([max(values) for values in by_event.values()]),
    }


def measure_service(subscribers: int, events: int, overrides: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wml-bench-fanout-") as scratch:
        work = Path(scratch)
        spec = {"id": ASSET, "name": "Idle job", "local": {"command": ["sleep", "600"]}}
        settings = {
            "catalog_dir": catalog(work / "catalog", [spec]),
            "max_running_jobs_per_consumer": 1,
            "max_queued_jobs_per_consumer": 10**6,
            **overrides,
        }
        try:
            with wml_server(work, **settings) as server:
                token = create_token(server.env, assets=(ASSET,))
                time.sleep(1.0)
                rss_before = proc_kib(server.pid, "VmRSS")
                started = time.perf_counter()
                clients_process = start_clients(
                    server.url.replace("http://", "ws://") + "/graphql", token, subscribers
                )
                connect_seconds = time.perf_counter() - started
                try:
                    time.sleep(2.0)
                    rss_idle = proc_kib(server.pid, "VmRSS")
                    headers = {"Authorization": f"Bearer {token}"}
                    variables = {"input": {"assetId": ASSET}}
                    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
                        for _ in range(events):
                            http.post(
                                "/graphql", json={"query": CREATE, "variables": variables}
                            ).raise_for_status()
                            time.sleep(INTERVAL)
                    time.sleep(3.0)
                    rss_after = proc_kib(server.pid, "VmRSS")
                finally:
                    deliveries = finish_clients(clients_process)
        finally:
            from tests.support.api import kill_leftover_workers

            kill_leftover_workers(work / "data" / "jobs")
    return {
        "connect_seconds": connect_seconds,
        "server_rss_before_kib": rss_before,
        "server_rss_idle_kib": rss_idle,
        "server_rss_after_events_kib": rss_after,
        "kib_per_idle_subscriber": (rss_idle - rss_before) / subscribers,
        **latencies(deliveries, subscribers),
    }


def measure_bare(subscribers: int, events: int) -> dict[str, Any]:
    port = free_port()
    command = [PYTHON, str(Path(__file__).resolve()), "--bare-server", str(port)]
    server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    try:
        if server.stdout.readline().strip() != "READY":
            raise RuntimeError("the bare server did not start")
        rss_before = proc_kib(server.pid, "VmRSS")
        started = time.perf_counter()
        clients_process = start_clients(f"ws://127.0.0.1:{port}", None, subscribers)
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
            deliveries = finish_clients(clients_process)
        server.stdin.write("STOP\n")
        server.stdin.flush()
    finally:
        stop(server)
    return {
        "connect_seconds": connect_seconds,
        "server_rss_before_kib": rss_before,
        "server_rss_idle_kib": rss_idle,
        "kib_per_idle_subscriber": (rss_idle - rss_before) / subscribers,
        **latencies(deliveries, subscribers),
    }


def run(counts: list[int], events: int, overrides: dict[str, str]) -> dict[str, Any]:
    runs = []
    for count in counts:
        print(f"-- {count} subscribers: service", flush=True)
        service = measure_service(count, events, overrides)
        print(f"-- {count} subscribers: bare websockets", flush=True)
        bare = measure_bare(count, events)
        s_p99, b_p99 = service["to_every_subscriber"]["p99_ms"], bare["to_every_subscriber"]["p99_ms"]
        runs.append(
            {
                "subscribers": count,
                "service": service,
                "bare": bare,
                "ratio_p99_to_every_service_over_bare": s_p99 / b_p99 if b_p99 else 0.0,
            }
        )
    return {
        "settings": {
            "events": events,
            "interval_s": INTERVAL,
            "clients": "one subprocess of this script (websockets asyncio client)",
            "server_settings": overrides,
        },
        "runs": runs,
        "target": "p99 < 500 ms, < 50 KB per idle subscriber (issue 9: at 10,000 subscribers)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1000", help="comma-separated subscriber counts")
    parser.add_argument("--events", type=int, default=10, help="jobs created (events) per count")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a server setting (e.g. stream_recheck_interval=60), repeatable",
    )
    parser.add_argument("--output", default="fanout", help="result name under bench/results/")
    parser.add_argument("--client", nargs=3, metavar=("URL", "TOKEN", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        url, token, count = args.client
        asyncio.run(clients(url, None if token == "-" else token, int(count)))
        return 0
    if args.bare_server:
        asyncio.run(bare_server(args.bare_server))
        return 0
    overrides = dict(item.split("=", 1) for item in args.set)
    document = run([int(c) for c in args.subscribers.split(",")], args.events, overrides)
    path = write_result(args.output, document)
    for entry in document["runs"]:
        for side in ("service", "bare"):
            r = entry[side]
            every, delivery = r["to_every_subscriber"], r["per_delivery"]
            print(
                f"{entry['subscribers']:>6} {side:>7}: to every subscriber p50 {every['p50_ms']:.0f}"
                f" p99 {every['p99_ms']:.0f} ms, per delivery p50 {delivery['p50_ms']:.0f} ms,"
                f" {r['kib_per_idle_subscriber']:.1f} KiB/subscriber,"
                f" {r['events_delivered_to_all']}/{r['events']} events to all,"
                f" connect {r['connect_seconds']:.1f} s"
            )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
