"""A server killed with SIGKILL and started again finishes every job it had: none stays non-terminal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import JOB_FIELDS, TERMINAL, kill_leftover_workers
from tests.support.processes import ADMIN, ServerProcess, token_from


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "data")
    try:
        yield proc
    finally:
        proc.stop()
        kill_leftover_workers(tmp_path / "data" / "jobs")


async def _gql(
    http: httpx.AsyncClient, query: str, variables: dict[str, object], token: str
) -> dict[str, object]:
    resp = await http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert "errors" not in body, body
    data: dict[str, object] = body["data"]
    return data


async def _create(http: httpx.AsyncClient, token: str, params: dict[str, int]) -> str:
    data = await _gql(
        http,
        "mutation($i: CreateJobInput!) { createJob(input: $i) { ... on Job { id } } }",
        {"i": {"assetId": "dummy-job", "parameters": params}},
        token,
    )
    job_id = data["createJob"]["id"]  # type: ignore[index]
    assert isinstance(job_id, str)
    return job_id


async def _job(http: httpx.AsyncClient, token: str, job_id: str) -> dict[str, object]:
    data = await _gql(http, f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}", {"id": job_id}, token)
    job = data["job"]
    assert isinstance(job, dict)
    return job


async def _wait(
    http: httpx.AsyncClient, token: str, job_id: str, states: set[str], timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await _job(http, token, job_id)
        if job["state"] in states:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"{job_id} never reached {states}")


async def test_sigkilled_server_finishes_running_and_meanwhile_finished_jobs_after_restart(
    server: ServerProcess,
) -> None:
    server.start()
    token = token_from(server.cli("consumers", "create", "alice", "--asset", "dummy-job"))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        long_job = await _create(http, token, {"SLEEPTIME": 4})
        short_job = await _create(http, token, {"SLEEPTIME": 1})
        failing_job = await _create(http, token, {"SLEEPTIME": 1, "FAIL": 7})
        for job_id in (long_job, short_job, failing_job):
            await _wait(http, token, job_id, {"RUNNING"})

        server.kill()
        await asyncio.sleep(2.5)  # the short jobs end while no server is running; the long one goes on
        server.start()

        outcomes = {j: await _wait(http, token, j, TERMINAL) for j in (long_job, short_job, failing_job)}
        for job_id in (long_job, short_job):
            job = outcomes[job_id]
            assert job["state"] == "COMPLETE", job
            [result] = job["outputs"]  # type: ignore[misc]
            body = (await http.get(result["downloadUrl"])).text
            assert "dummy-job: SLEEPTIME=" in body
        assert outcomes[failing_job]["state"] == "EXECUTOR_ERROR"
        assert outcomes[failing_job]["exitCode"] == 7

        listing = await _gql(http, "{ jobs(first: 100) { nodes { id state } } }", {}, ADMIN)
        states = {n["state"] for n in listing["jobs"]["nodes"]}  # type: ignore[index]
        assert states <= TERMINAL, states
