"""The real service on a loopback port, and a thin GraphQL-over-HTTP client for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.workflow.host.jobdir import JobDir
from core.grants import create_consumer_with_grants
from core.services import Services
from core.settings import Settings
from tests.support.catalog import standard_assets, write_catalog
from wml.server import RunningServer, embedded_server

TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}

JOB_FIELDS = """id state reason message exitCode logTail assetId startedAt finishedAt
  outputs { id name size sha256 downloadUrl origin } log { id name downloadUrl }"""


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    catalog = write_catalog(data_dir / "catalog", standard_assets())
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "host": "127.0.0.1",
        "port": 0,
        "catalog_dir": catalog,
        "admin_token": "test-admin-token",
        "tick_interval": 0.1,
        "reconcile_interval": 1.0,
        "cancel_timeout": 10,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Api:
    server: RunningServer
    http: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def services(self) -> Services:
        services: Services = self.server.app.state.services
        return services

    async def consumer(self, name: str, assets: tuple[str, ...] = ("dummy-job",)) -> str:
        issued = await create_consumer_with_grants(self.services.store, name, list(assets))
        return issued[0].token

    async def gql(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def data(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str
    ) -> dict[str, Any]:
        body = await self.gql(query, variables, token=token)
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data

    async def upload(self, token: str, content: bytes, name: str = "input.txt") -> dict[str, Any]:
        operations = {
            "query": "mutation($file: Upload!, $name: String) { uploadFile(file: $file, name: $name) {"
            " __typename ... on File { id name size sha256 } ... on Error { message code } "
            " ... on ValidationError { field } } }",
            "variables": {"file": None, "name": name},
        }
        resp = await self.http.post(
            "/graphql",
            headers={"Authorization": f"Bearer {token}"},
            data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
            files={"0": (name, content, "application/octet-stream")},
        )
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()["data"]["uploadFile"]
        return result

    async def create_job(
        self,
        token: str,
        asset_id: str = "dummy-job",
        inputs: dict[str, str] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        data = await self.data(
            "mutation($input: CreateJobInput!) { createJob(input: $input) { __typename"
            " ... on Job { id state } ... on Error { message code } ... on ValidationError { field } } }",
            {
                "input": {
                    "assetId": asset_id,
                    "inputs": [{"slot": s, "fileId": f} for s, f in (inputs or {}).items()],
                    "parameters": parameters or {},
                }
            },
            token=token,
        )
        result: dict[str, Any] = data["createJob"]
        return result

    async def job(self, token: str, job_id: str) -> dict[str, Any] | None:
        data = await self.data(
            f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}", {"id": job_id}, token=token
        )
        job: dict[str, Any] | None = data["job"]
        return job

    async def wait_for(
        self, token: str, job_id: str, states: set[str] | None = None, timeout: float = 30
    ) -> dict[str, Any]:
        wanted = states or TERMINAL
        deadline = time.monotonic() + timeout
        job: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            job = await self.job(token, job_id)
            assert job is not None
            if job["state"] in wanted:
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached {wanted}; last seen {job}")


def kill_leftover_workers(jobs_dir: Path) -> None:
    """Local workers outlive the server on purpose (restart adoption); a test must not leave them.

    Only runners that are still this job directory's own are killed: pids are reused quickly (pid_max
    may be 32768), and a stale runner.pid must never take down another test's worker.
    """
    for pid_file in jobs_dir.glob("*/runner.pid"):
        job = JobDir(pid_file.parent)
        pid = job.runner_pid()
        if pid is not None and job.runner_alive():
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


@asynccontextmanager
async def running_api(data_dir: Path, **overrides: Any) -> AsyncIterator[Api]:
    settings = make_settings(data_dir, **overrides)
    try:
        async with (
            embedded_server(settings) as server,
            httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        ):
            yield Api(server=server, http=http)
    finally:
        kill_leftover_workers(settings.jobs_dir())
