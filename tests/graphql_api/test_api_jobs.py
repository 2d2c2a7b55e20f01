"""Jobs through the real API over loopback: success, failure, cancel, timeouts, quota and capacity."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import httpx

from tests.support.api import Api, running_api


async def test_job_completes_and_its_output_downloads_with_the_right_sha256(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"first line\nsecond line\n", "data.txt")
    assert uploaded["__typename"] == "File"
    assert uploaded["sha256"] == hashlib.sha256(b"first line\nsecond line\n").hexdigest()

    created = await api.create_job(token, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 0})
    assert created["state"] == "QUEUED"
    job = await api.wait_for(token, created["id"])

    assert job["state"] == "COMPLETE", job
    assert job["exitCode"] == 0
    [result] = job["outputs"]
    assert result["name"] == "result.txt" and result["origin"] == "JOB_OUTPUT"
    body = (await api.http.get(result["downloadUrl"])).content
    assert hashlib.sha256(body).hexdigest() == result["sha256"]
    assert b"first line" in body
    log = (await api.http.get(job["log"]["downloadUrl"])).text
    assert "dummy-job: SLEEPTIME=0 FAIL=0" in log


async def test_failing_job_ends_executor_error_with_exit_code_and_log(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0, "FAIL": 3})
    job = await api.wait_for(token, created["id"])
    assert job["state"] == "EXECUTOR_ERROR"
    assert job["reason"] == "NONZERO_EXIT"
    assert job["exitCode"] == 3
    assert "FAIL=3" in job["logTail"]
    assert job["log"] is not None


async def test_cancel_of_running_job_ends_canceled_and_kills_its_process_group(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 60})
    await api.wait_for(token, created["id"], {"RUNNING"})
    pid_file = api.services.settings.jobs_dir() / created["id"] / "runner.pid"
    pgid = int(pid_file.read_text().split()[0])

    data = await api.data(
        "mutation($id: ID!) { cancelJob(id: $id) { __typename ... on Job { state reason } } }",
        {"id": created["id"]},
        token=token,
    )
    assert data["cancelJob"]["state"] in {"CANCELING", "CANCELED"}
    job = await api.wait_for(token, created["id"])
    assert job["state"] == "CANCELED"
    assert job["reason"] == "CANCELED_BY_USER"
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError("the job's process group is still alive")


async def test_cancel_of_finished_job_is_a_no_op(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    await api.wait_for(token, created["id"])
    data = await api.data(
        "mutation($id: ID!) { cancelJob(id: $id) { __typename ... on Job { state } } }",
        {"id": created["id"]},
        token=token,
    )
    assert data["cancelJob"] == {"__typename": "Job", "state": "COMPLETE"}


async def test_run_timeout_ends_the_job_with_reason_run_timeout(api: Api) -> None:
    token = await api.consumer("alice", ("quick-timeout",))
    created = await api.create_job(token, "quick-timeout", parameters={"SLEEPTIME": 30})
    job = await api.wait_for(token, created["id"], timeout=20)
    assert job["state"] == "EXECUTOR_ERROR"
    assert job["reason"] == "RUN_TIMEOUT"


async def test_queue_timeout_fails_a_job_that_never_gets_capacity(tmp_path: Path, database_url: str) -> None:
    async with running_api(tmp_path, database_url=database_url, backend_capacity=1) as api:
        blocking = await api.consumer("alice", ("dummy-job",))
        blocker = await api.create_job(blocking, parameters={"SLEEPTIME": 30})
        await api.wait_for(blocking, blocker["id"], {"RUNNING"})
        token = await api.consumer("bob", ("quick-timeout",))
        waiting = await api.create_job(token, "quick-timeout", parameters={"SLEEPTIME": 0})
        job = await api.wait_for(token, waiting["id"], timeout=20)
        assert job["state"] == "SYSTEM_ERROR"
        assert job["reason"] == "QUEUE_TIMEOUT"


async def test_capacity_limit_keeps_jobs_queued_until_room_frees(tmp_path: Path, database_url: str) -> None:
    async with running_api(tmp_path, database_url=database_url, backend_capacity=1) as api:
        token = await api.consumer("alice")
        first = await api.create_job(token, parameters={"SLEEPTIME": 2})
        await api.wait_for(token, first["id"], {"RUNNING"})
        second = await api.create_job(token, parameters={"SLEEPTIME": 0})
        seen = await api.job(token, second["id"])
        assert seen is not None and seen["state"] == "QUEUED"
        done_first = await api.wait_for(token, first["id"])
        done_second = await api.wait_for(token, second["id"])
        assert done_first["state"] == done_second["state"] == "COMPLETE"
        assert done_second["startedAt"] >= done_first["finishedAt"]


async def test_per_consumer_quota_queues_one_consumer_without_blocking_another(
    tmp_path: Path, database_url: str
) -> None:
    async with running_api(
        tmp_path, database_url=database_url, max_running_jobs_per_consumer=1, backend_capacity=4
    ) as api:
        alice = await api.consumer("alice")
        bob = await api.consumer("bob")
        a1 = await api.create_job(alice, parameters={"SLEEPTIME": 2})
        await api.wait_for(alice, a1["id"], {"RUNNING"})
        a2 = await api.create_job(alice, parameters={"SLEEPTIME": 0})
        b1 = await api.create_job(bob, parameters={"SLEEPTIME": 0})
        assert (await api.wait_for(bob, b1["id"]))["state"] == "COMPLETE"
        still = await api.job(alice, a2["id"])
        assert still is not None and still["state"] == "QUEUED"
        assert (await api.wait_for(alice, a2["id"]))["state"] == "COMPLETE"


async def test_queued_jobs_beyond_the_quota_are_refused(tmp_path: Path, database_url: str) -> None:
    async with running_api(tmp_path, database_url=database_url, max_queued_jobs_per_consumer=1) as api:
        token = await api.consumer("alice")
        await api.create_job(token, parameters={"SLEEPTIME": 5})
        refused = await api.create_job(token, parameters={"SLEEPTIME": 0})
        assert refused["__typename"] == "QuotaExceededError"
        assert refused["code"] == "QUOTA_EXCEEDED"


async def test_missing_required_output_ends_output_missing(api: Api) -> None:
    token = await api.consumer("alice", ("no-output",))
    created = await api.create_job(token, "no-output")
    job = await api.wait_for(token, created["id"])
    assert job["state"] == "EXECUTOR_ERROR"
    assert job["reason"] == "OUTPUT_MISSING"


async def test_delete_job_removes_it_and_its_outputs(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    job = await api.wait_for(token, created["id"])
    url = job["outputs"][0]["downloadUrl"]
    data = await api.data(
        "mutation($id: ID!) { deleteJob(id: $id) { __typename ... on DeletedJob { id } } }",
        {"id": job["id"]},
        token=token,
    )
    assert data["deleteJob"] == {"__typename": "DeletedJob", "id": job["id"]}
    assert await api.job(token, job["id"]) is None
    assert (await api.http.get(url)).status_code == 404


async def test_delete_of_a_live_job_is_a_conflict(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 30})
    data = await api.data(
        "mutation($id: ID!) { deleteJob(id: $id) { __typename ... on Error { code } } }",
        {"id": created["id"]},
        token=token,
    )
    assert data["deleteJob"] == {"__typename": "ConflictError", "code": "CONFLICT"}


async def test_jobs_list_pages_with_cursors(api: Api) -> None:
    token = await api.consumer("alice")
    ids = [(await api.create_job(token, parameters={"SLEEPTIME": 0}))["id"] for _ in range(3)]
    query = (
        "query($after: String) { jobs(first: 2, after: $after) { edges { cursor node { id } }"
        " pageInfo { hasNextPage endCursor } } }"
    )
    first = (await api.data(query, token=token))["jobs"]
    assert first["pageInfo"]["hasNextPage"] is True
    second = (await api.data(query, {"after": first["pageInfo"]["endCursor"]}, token=token))["jobs"]
    assert second["pageInfo"]["hasNextPage"] is False
    listed = [e["node"]["id"] for e in first["edges"] + second["edges"]]
    assert sorted(listed) == sorted(ids)
    assert len(set(listed)) == 3


async def test_healthz_and_readyz_answer(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).json() == {"status": "ready"}
