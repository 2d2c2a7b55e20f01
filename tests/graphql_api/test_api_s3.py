"""The service on S3 (moto on loopback): presigned downloads, presigned uploads verified by completeUpload,
jobs staging through S3, and an S3 outage in the middle of an upload."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.support.api import Api, running_api
from tests.support.s3 import BUCKET, S3Server, bucket_contents, s3_link

MiB = 1024 * 1024
CREATE_UPLOAD = """mutation($input: CreateUploadInput!) { createUpload(input: $input) { __typename
  ... on UploadTicket { fileId uploadUrl method } ... on Error { message code } } }"""
COMPLETE_UPLOAD = """mutation($id: ID!) { completeUpload(fileId: $id) { __typename
  ... on File { id name size sha256 downloadUrl } ... on Error { message code }
  ... on ValidationError { field } } }"""
FILE = "query($id: ID!) { file(id: $id) { id size sha256 downloadUrl } }"


@pytest.fixture
async def s3_api(tmp_path: Path, s3: S3Server) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "data", **s3.settings()) as api:
        yield api


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def announce(api: Api, token: str, **announced: Any) -> dict[str, Any]:
    data = await api.data(CREATE_UPLOAD, {"input": {"name": "big.bin", **announced}}, token=token)
    ticket: dict[str, Any] = data["createUpload"]
    assert ticket["__typename"] == "UploadTicket", ticket
    return ticket


async def complete(api: Api, token: str, file_id: str) -> dict[str, Any]:
    data = await api.data(COMPLETE_UPLOAD, {"id": file_id}, token=token)
    result: dict[str, Any] = data["completeUpload"]
    return result


async def visible(api: Api, token: str, file_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = (await api.data(FILE, {"id": file_id}, token=token))["file"]
    return found


async def file_rows(api: Api) -> int:
    async with api.services.store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM file"))).scalar_one())


async def test_download_url_is_a_presigned_storage_url(s3_api: Api, s3: S3Server) -> None:
    token = await s3_api.consumer("alice")
    content = os.urandom(20_000)
    uploaded = await s3_api.upload(token, content)

    found = await visible(s3_api, token, uploaded["id"])

    assert found is not None
    assert found["downloadUrl"].startswith(f"{s3.endpoint}/{BUCKET}/consumers/")
    assert "X-Amz-Signature=" in found["downloadUrl"]
    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(found["downloadUrl"])).content == content


async def test_presigned_upload_completes_into_a_file_a_job_can_use(s3_api: Api, s3: S3Server) -> None:
    token = await s3_api.consumer("alice")
    content = os.urandom(6 * MiB)
    ticket = await announce(s3_api, token, size=len(content), sha256=sha(content))
    assert ticket["uploadUrl"].startswith(f"{s3.endpoint}/{BUCKET}/")  # bypasses the API
    assert ticket["method"] == "PUT"

    async with httpx.AsyncClient(timeout=60) as direct:
        assert (await direct.put(ticket["uploadUrl"], content=content)).status_code == 200
    assert await visible(s3_api, token, ticket["fileId"]) is None  # not usable before completion
    completed = await complete(s3_api, token, ticket["fileId"])

    assert completed["__typename"] == "File"
    assert (completed["size"], completed["sha256"]) == (len(content), sha(content))
    again = await complete(s3_api, token, ticket["fileId"])  # completing again changes nothing
    assert (again["id"], again["size"], again["sha256"]) == (ticket["fileId"], len(content), sha(content))
    job = await s3_api.create_job(token, inputs={"data": ticket["fileId"]}, parameters={"SLEEPTIME": 0})
    finished = await s3_api.wait_for(token, job["id"])
    assert finished["state"] == "COMPLETE", finished
    async with httpx.AsyncClient() as anonymous:
        result = await anonymous.get(finished["outputs"][0]["downloadUrl"])
    assert result.status_code == 200
    assert sha(result.content) == finished["outputs"][0]["sha256"]


@pytest.mark.parametrize(
    ("sent", "announced", "problem"),
    [
        # S3 refuses a length other than the signed one; moto does not check (TESTING.md), so the bytes
        # arrive here and completion is what refuses them.
        (500, {"size": 100}, "announced"),
        (500, {"size": 500, "sha256": sha(b"something else")}, "sha256"),
    ],
)
async def test_completion_that_does_not_match_is_refused_and_leaves_nothing_usable(
    s3_api: Api, s3: S3Server, sent: int, announced: dict[str, Any], problem: str
) -> None:
    token = await s3_api.consumer("alice", assets=("small-input",))
    content = os.urandom(sent)
    ticket = await announce(s3_api, token, **announced)
    async with httpx.AsyncClient() as direct:
        assert (await direct.put(ticket["uploadUrl"], content=content)).status_code == 200

    refused = await complete(s3_api, token, ticket["fileId"])

    assert refused["__typename"] == "ValidationError"
    assert problem in refused["message"]
    assert refused["field"] == "content"
    assert await bucket_contents(s3.endpoint) == []  # the bytes are gone
    assert await visible(s3_api, token, ticket["fileId"]) is None
    again = await complete(s3_api, token, ticket["fileId"])
    assert again["__typename"] == "ConflictError"  # nothing there to complete any more


async def test_without_an_announced_size_the_upload_url_is_the_apis_own_and_stops_at_the_limit(
    s3_api: Api, s3: S3Server
) -> None:
    token = await s3_api.consumer("alice", assets=("small-input",))  # at most 1024 bytes
    ticket = await announce(s3_api, token)
    assert ticket["uploadUrl"].startswith(f"{s3_api.url}/files/")  # never an unbounded presigned PUT

    async with httpx.AsyncClient() as direct:
        refused = await direct.put(ticket["uploadUrl"], content=os.urandom(2000))

    assert refused.status_code == 413
    assert await bucket_contents(s3.endpoint) == []
    assert await visible(s3_api, token, ticket["fileId"]) is None


async def test_completion_before_the_bytes_arrive_is_a_conflict(s3_api: Api) -> None:
    token = await s3_api.consumer("alice")
    ticket = await announce(s3_api, token, size=10)

    early = await complete(s3_api, token, ticket["fileId"])

    assert early["__typename"] == "ConflictError"
    assert "not arrived" in early["message"]


async def test_another_consumer_cannot_complete_an_upload(s3_api: Api) -> None:
    alice, bob = await s3_api.consumer("alice"), await s3_api.consumer("bob")
    ticket = await announce(s3_api, alice, size=10)

    assert (await complete(s3_api, bob, ticket["fileId"]))["__typename"] == "NotFoundError"
    assert (await complete(s3_api, alice, "f-unknown"))["__typename"] == "NotFoundError"


async def test_s3_outage_mid_upload_is_a_clear_error_and_leaves_no_file_and_no_upload(
    tmp_path: Path, s3: S3Server
) -> None:
    async with (
        s3_link(s3) as link,
        running_api(
            tmp_path / "data", **s3.settings(endpoint=link.endpoint, max_attempts=2, part_size=5 * MiB)
        ) as api,
    ):
        token = await api.consumer("alice")
        link.cut_after(7 * MiB)  # the API streams the upload to S3 in 5 MiB parts: this is in the second

        failed = await api.upload(token, os.urandom(12 * MiB), "big.bin")

        assert failed["__typename"] == "UnavailableError", failed
        assert "storage" in failed["message"]
        assert await file_rows(api) == 0
        await link.restore()
        leftover = await bucket_contents(s3.endpoint)  # no object; the abort could not reach S3 then
        assert len(leftover) == 1
        assert leftover[0].startswith("multipart:consumers/")
        after = await api.upload(token, b"back again", "small.txt")  # the next write aborts the leftover
        assert after["__typename"] == "File"
        contents = await bucket_contents(s3.endpoint)
        assert len(contents) == 1
        assert contents[0].endswith(f"/files/{after['id']}")
