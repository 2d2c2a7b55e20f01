"""Two ``wml serve`` processes on one PostgreSQL database: a subscriber connected to one replica
receives, live and in order, the events of a job created through the other (LISTEN/NOTIFY)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import TERMINAL, kill_leftover_workers
from tests.support.processes import ServerProcess, token_from
from tests.support.ws import Operation, connect

EVENTS = "subscription { jobEvents { seq jobId state } }"
CREATE = "mutation($i: CreateJobInput!) { createJob(input: $i) { ... on Job { id } } }"


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    shared = {
        "database_url": pg_url,
        "storage": f"file://{tmp_path / 'files'}",  # one object store, as S3 would be
        "secret_key": "replicas-share-their-signing-key",
        "reconcile_interval": "3600",  # each local backend knows only the jobs it runs itself
    }
    pair = (ServerProcess(tmp_path / "a", **shared), ServerProcess(tmp_path / "b", **shared))
    try:
        for server in pair:
            server.start()
        yield pair
    finally:
        for server in pair:
            server.stop()
            kill_leftover_workers(Path(server.env["WML_DATA_DIR"]) / "jobs")


async def _create(http: httpx.AsyncClient, token: str, sleep: int) -> str:
    variables = {"i": {"assetId": "dummy-job", "parameters": {"SLEEPTIME": sleep}}}
    resp = await http.post("/graphql", json={"query": CREATE, "variables": variables})
    job_id: str = resp.json()["data"]["createJob"]["id"]
    return job_id


async def _events_of(op: Operation, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["state"] not in TERMINAL:
        event = (await op.next(timeout=30))["jobEvents"]
        if event["jobId"] == job_id:
            events.append(event)
    return events


async def test_a_subscriber_on_one_replica_receives_the_events_of_a_job_created_on_the_other(
    replicas: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = replicas
    token = token_from(b.cli("consumers", "create", "alice", "--asset", "dummy-job"))
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(a.url, token) as conn, httpx.AsyncClient(base_url=b.url, headers=headers) as http:
        op = await conn.subscribe(EVENTS)  # live only: no replay can deliver anything here
        # The subscription is registered on A once A passes on any event committed through B.
        probes = []
        for _ in range(20):
            probes.append(await _create(http, token, 0))
            try:
                first = (await op.next(timeout=1))["jobEvents"]
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("replica A never passed on an event committed through replica B")
        assert first["jobId"] in probes

        job_id = await _create(http, token, 1)
        events = await _events_of(op, job_id)
    assert [e["state"] for e in events] == ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(set(seqs))
    # A replica that never saw the request answers for the job too: one database, one truth.
    async with httpx.AsyncClient(base_url=a.url, headers=headers) as http_a:
        body = (
            await http_a.post("/graphql", json={"query": f'{{ job(id: "{job_id}") {{ state }} }}'})
        ).json()
    assert body["data"]["job"]["state"] == "COMPLETE"
