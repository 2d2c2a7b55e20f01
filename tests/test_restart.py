"""A server killed with SIGKILL and started again finishes every job it had: none stays non-terminal."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.api import JOB_FIELDS, TERMINAL, kill_leftover_workers
from tests.support.catalog import standard_assets, write_catalog

ADMIN = "restart-admin-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``wml serve`` as a real child process, as an operator runs it."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "WML_DATA_DIR": str(data_dir),
            "WML_PORT": str(self.port),
            "WML_CATALOG_DIR": str(write_catalog(data_dir / "catalog", standard_assets())),
            "WML_ADMIN_TOKEN": ADMIN,
            "WML_TICK_INTERVAL": "0.1",
            "WML_RECONCILE_INTERVAL": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "server.log"

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "wml.cli", *args],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return done.stdout.decode()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wml.cli", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError("server did not become ready:\n" + self.log.read_text())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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


def _token(cli_output: str) -> str:
    return next(line.split(": ", 1)[1].strip() for line in cli_output.splitlines() if "token" in line)


async def test_sigkilled_server_finishes_running_and_meanwhile_finished_jobs_after_restart(
    server: ServerProcess,
) -> None:
    server.start()
    token = _token(server.cli("consumers", "create", "alice", "--asset", "dummy-job"))
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
