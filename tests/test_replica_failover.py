"""Three `wml serve` replicas on one fresh PostgreSQL database act as one service: they start together
(migrations under a lock), take jobs through any of them, and when one is killed with SIGKILL while its
jobs run and comes back (same data directory, so the same replica id), it adopts its own jobs: every job
ends COMPLETE and none is started twice. The other replicas never judge a job that is not theirs; a
replica that does not come back loses its jobs once, after its lease and grace; and a provisioning
callback is delivered once however many replicas see it due."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.api import TERMINAL, kill_leftover_workers
from tests.support.postgres import PostgresServer
from tests.support.processes import ServerProcess, token_from
from wml.client.connector import running_connector

JOBS = 6
CREATE = (
    "mutation($i: CreateJobInput!) { createJob(input: $i) { ... on Job { id } ... on Error { message } } }"
)
STATE = "query($id: ID!) { job(id: $id) { id state reason message } }"


@pytest.fixture
async def fresh_pg(postgres: PostgresServer) -> AsyncIterator[tuple[str, str]]:
    name = await postgres.create_database(empty=True)  # the replicas migrate it, all at once
    try:
        yield postgres.url(name), postgres.url(name, "postgresql")
    finally:
        await postgres.drop_database(name)


@pytest.fixture
def shared(tmp_path: Path, fresh_pg: tuple[str, str]) -> dict[str, str]:
    return {
        "database_url": fresh_pg[0],
        "storage": f"file://{tmp_path / 'files'}",  # one object store, as S3 would be
        "secret_key": "replicas-share-their-signing-key",
        "reconcile_interval": "1",
        "replica_lease": "3",
        "replica_grace": "120",  # longer than the restart: the replica comes back for its jobs
        "max_running_jobs_per_consumer": "10",  # a quota of the service as a whole, not per replica
        "backend_capacity": "2",  # per replica (host-bound): the six jobs spread over all three
    }


@pytest.fixture
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, shared: dict[str, str]
) -> Iterator[list[ServerProcess]]:
    named = getattr(request, "param", {}).pop("named", False)  # explicit ids r0..r2, else the default
    shared.update(getattr(request, "param", {}))
    servers = [
        ServerProcess(tmp_path / f"r{i}", **shared, **({"replica_id": f"r{i}"} if named else {}))
        for i in range(3)
    ]
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(ServerProcess.start, servers))  # all at once on the empty database
        yield servers
    finally:
        for server in servers:
            server.stop()
            kill_leftover_workers(Path(server.env["WML_DATA_DIR"]) / "jobs")


def states(server: ServerProcess, token: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: server.gql(token, STATE, {"id": i})["job"] for i in ids}


def wait_for(server: ServerProcess, token: str, ids: list[str], done: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        now = states(server, token, ids)
        if all(j["state"] in done for j in now.values()) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


async def test_a_killed_replica_comes_back_for_its_jobs_and_no_job_runs_twice(
    replicas: list[ServerProcess], fresh_pg: tuple[str, str], tmp_path: Path, shared: dict[str, str]
) -> None:
    token = token_from(replicas[0].cli("consumers", "create", "acme", "--asset", "dummy-job"))
    ids = []
    for n in range(JOBS):  # through every replica in turn
        variables = {"i": {"assetId": "dummy-job", "parameters": {"SLEEPTIME": 6}}}
        created = replicas[n % 3].gql(token, CREATE, variables)["createJob"]
        assert "id" in created, created
        ids.append(created["id"])
    running = wait_for(replicas[2], token, ids, {"RUNNING", *TERMINAL}, 60)
    assert {j["state"] for j in running.values()} == {"RUNNING"}, running

    replicas[1].kill()  # SIGKILL while its jobs run; its workers keep running
    time.sleep(1)
    replicas[1] = ServerProcess(tmp_path / "r1", **shared)  # the same data directory: the same id
    replicas[1].start()

    final = wait_for(replicas[0], token, ids, TERMINAL, 90)
    assert {i: j["state"] for i, j in final.items()} == dict.fromkeys(ids, "COMPLETE"), final
    conn = await asyncpg.connect(fresh_pg[1])
    try:
        rows = await conn.fetch("SELECT job_id, state FROM job_event WHERE state = 'INITIALIZING'")
        owners = await conn.fetch("SELECT DISTINCT owner FROM job")
    finally:
        await conn.close()
    assert Counter(r["job_id"] for r in rows) == Counter(ids)  # each job started exactly once
    assert len({r["owner"] for r in owners}) > 1  # the jobs were spread over the replicas


@pytest.mark.parametrize("replicas", [{"replica_grace": "2", "named": True}], indirect=True)
async def test_the_jobs_of_a_replica_that_does_not_come_back_are_lost_once_and_the_others_complete(
    replicas: list[ServerProcess], fresh_pg: tuple[str, str]
) -> None:
    token = token_from(replicas[0].cli("consumers", "create", "acme", "--asset", "dummy-job"))
    ids = []
    for n in range(JOBS):
        variables = {"i": {"assetId": "dummy-job", "parameters": {"SLEEPTIME": 8}}}
        ids.append(replicas[n % 3].gql(token, CREATE, variables)["createJob"]["id"])
    wait_for(replicas[0], token, ids, {"RUNNING", *TERMINAL}, 60)
    conn = await asyncpg.connect(fresh_pg[1])
    try:
        dead = {r["id"] for r in await conn.fetch("SELECT id FROM job WHERE owner = 'r1'")}
        assert dead, "replica r1 started none of the jobs: nothing to lose"
        replicas[1].kill()  # and it stays away past its lease and grace (3 + 2 s)

        final = wait_for(replicas[0], token, ids, TERMINAL, 90)
        lost = {i for i, j in final.items() if j["state"] != "COMPLETE"}
        events = await conn.fetch("SELECT job_id FROM job_event WHERE reason = 'BACKEND_LOST'")
    finally:
        await conn.close()
    assert lost == dead, final
    assert all(final[i]["reason"] == "BACKEND_LOST" for i in lost)
    assert all("did not come back within 5 s" in final[i]["message"] for i in lost)
    assert Counter(r["job_id"] for r in events) == Counter(dead)  # once each


async def test_each_provisioning_callback_arrives_once_however_many_replicas_run(
    tmp_path: Path, shared: dict[str, str]
) -> None:
    async with running_connector() as connector:
        settings = {**shared, **{k: str(v) for k, v in connector.provisioner_settings().items()}}
        servers = [ServerProcess(tmp_path / f"p{i}", **settings) for i in range(3)]
        try:
            with ThreadPoolExecutor(len(servers)) as pool:
                list(pool.map(ServerProcess.start, servers))
            transfers = [f"tp-{n}" for n in range(20)]
            for n, tp in enumerate(transfers):  # spread over the replicas, as a load balancer would
                body = connector.request_body("dummy-job", tp, kind="provision")
                assert (await connector.post(f"{servers[n % 3].url}/provision/", body)).status_code < 300
            for tp in transfers:
                await connector.wait_for_callback(tp, within=60)
            await asyncio.sleep(4)  # time for any second delivery to show
        finally:
            for server in servers:
                server.stop()

    assert Counter(c.transfer_process_id for c in connector.accepted) == Counter(transfers)
    assert connector.refused == []
