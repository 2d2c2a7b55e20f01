"""Files through the real API over loopback: uploads (multipart and streamed PUT), downloads with Range,
size limits, deletion, and the signed download URL."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.support.api import Api, running_api

FILE_FIELDS = "id name size sha256 contentType origin downloadUrl"
CREATE_UPLOAD = """mutation($input: CreateUploadInput!) { createUpload(input: $input) { __typename
  ... on UploadTicket { fileId uploadUrl method expiresAt } ... on Error { message code }
  ... on ValidationError { field } } }"""
DELETE_FILE = """mutation($id: ID!) { deleteFile(id: $id) { __typename ... on DeletedFile { id }
  ... on Error { message code } } }"""


def stored_objects(api: Api) -> list[Path]:
    """Every file in the storage directory, temp files included."""
    root = api.services.settings.data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file())


async def multipart(api: Api, token: str, content: bytes, name: str = "input.txt") -> httpx.Response:
    """A GraphQL multipart upload, answered as a raw HTTP response (the guard may refuse it)."""
    operations = {
        "query": "mutation($file: Upload!, $name: String) { uploadFile(file: $file, name: $name) {"
        " __typename ... on File { id } ... on Error { message code } ... on ValidationError { field } } }",
        "variables": {"file": None, "name": name},
    }
    return await api.http.post(
        "/graphql",
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": (name, content, "application/octet-stream")},
    )


async def list_files(api: Api, token: str) -> list[dict[str, Any]]:
    data = await api.data(f"{{ files {{ nodes {{ {FILE_FIELDS} }} }} }}", token=token)
    nodes: list[dict[str, Any]] = data["files"]["nodes"]
    return nodes


async def get_file(api: Api, token: str, file_id: str) -> dict[str, Any] | None:
    data = await api.data(
        f"query($id: ID!) {{ file(id: $id) {{ {FILE_FIELDS} }} }}", {"id": file_id}, token=token
    )
    found: dict[str, Any] | None = data["file"]
    return found


async def create_upload(api: Api, token: str, **announced: Any) -> dict[str, Any]:
    data = await api.data(CREATE_UPLOAD, {"input": announced}, token=token)
    ticket: dict[str, Any] = data["createUpload"]
    return ticket


async def chunked(content: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(content), size):
        yield content[start : start + size]


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = dict(p.split("=", 1) for p in parts.query.split("&"))
    query.update(params)
    return parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())).geturl()


# -- multipart upload and download ------------------------------------------------------------------------


async def test_multipart_upload_is_listed_and_downloads_the_exact_bytes(api: Api) -> None:
    token = await api.consumer("alice")
    content = os.urandom(10_000)
    uploaded = await api.upload(token, content, "blob.bin")

    assert uploaded["__typename"] == "File"
    assert uploaded["size"] == len(content)
    assert uploaded["sha256"] == hashlib.sha256(content).hexdigest()
    found = await get_file(api, token, uploaded["id"])
    assert found is not None and found["name"] == "blob.bin" and found["origin"] == "UPLOAD"
    assert [f["id"] for f in await list_files(api, token)] == [uploaded["id"]]

    resp = await api.http.get(found["downloadUrl"])
    assert resp.status_code == 200
    assert resp.content == content
    assert resp.headers["accept-ranges"] == "bytes"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["content-disposition"].startswith('attachment; filename="blob.bin"')


async def test_range_requests_answer_206_with_content_range(api: Api) -> None:
    token = await api.consumer("alice")
    content = b"0123456789"
    uploaded = await api.upload(token, content)
    found = await get_file(api, token, uploaded["id"])
    assert found is not None
    url = found["downloadUrl"]

    head = await api.http.get(url, headers={"Range": "bytes=0-4"})
    assert head.status_code == 206
    assert head.headers["content-range"] == "bytes 0-4/10"
    assert head.content == b"01234"

    suffix = await api.http.get(url, headers={"Range": "bytes=-3"})
    assert suffix.status_code == 206
    assert suffix.headers["content-range"] == "bytes 7-9/10"
    assert suffix.content == b"789"

    rest = await api.http.get(url, headers={"Range": "bytes=5-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == "bytes 5-9/10"
    assert rest.content == b"56789"


async def test_unsatisfiable_range_answers_416_with_the_size(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"0123456789")
    found = await get_file(api, token, uploaded["id"])
    assert found is not None
    for header in ("bytes=10-", "bytes=50-60", "bytes=-0"):
        resp = await api.http.get(found["downloadUrl"], headers={"Range": header})
        assert resp.status_code == 416, header
        assert resp.headers["content-range"] == "bytes */10"


async def test_a_range_header_that_is_not_a_single_valid_range_is_ignored(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"0123456789")
    found = await get_file(api, token, uploaded["id"])
    assert found is not None
    for header in ("bytes=--1", "bytes=+1-2", "bytes=0-4,6-7", "items=0-1", "bytes=-", "bytes=1-2-3"):
        resp = await api.http.get(found["downloadUrl"], headers={"Range": header})
        assert (resp.status_code, resp.content) == (200, b"0123456789"), header
        assert "content-range" not in resp.headers


async def test_a_range_of_an_empty_file_is_unsatisfiable(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"", "empty.txt")
    found = await get_file(api, token, uploaded["id"])
    assert found is not None and found["size"] == 0
    assert (await api.http.get(found["downloadUrl"])).content == b""
    for header in ("bytes=0-0", "bytes=-5"):
        resp = await api.http.get(found["downloadUrl"], headers={"Range": header})
        assert resp.status_code == 416, header
        assert resp.headers["content-range"] == "bytes */0"


async def test_signed_download_url_works_without_a_token_but_only_for_its_file(api: Api) -> None:
    token = await api.consumer("alice")
    first = await api.upload(token, b"first", "a.txt")
    second = await api.upload(token, b"second", "b.txt")
    found = await get_file(api, token, first["id"])
    assert found is not None
    url = found["downloadUrl"]

    async with httpx.AsyncClient() as anonymous:
        assert (await anonymous.get(url)).content == b"first"
        other = url.replace(first["id"], second["id"])
        assert (await anonymous.get(other)).status_code == 404
        assert (await anonymous.get(url.split("?")[0])).status_code == 404
        assert (await anonymous.put(url, content=b"overwrite")).status_code == 404
    assert (await api.http.get(url)).content == b"first"


# -- streamed upload (createUpload + PUT) ----------------------------------------------------------------


async def test_streamed_upload_of_3_mib_appears_with_the_right_size_and_sha256(api: Api) -> None:
    token = await api.consumer("alice")
    content = os.urandom(3 * 1024 * 1024)
    digest = hashlib.sha256(content).hexdigest()
    ticket = await create_upload(api, token, name="big.bin", size=len(content), sha256=digest)
    assert ticket["__typename"] == "UploadTicket" and ticket["method"] == "PUT"
    assert await get_file(api, token, ticket["fileId"]) is None  # not visible before its bytes arrive

    resp = await api.http.put(ticket["uploadUrl"], content=chunked(content))
    assert resp.status_code == 201, resp.text

    found = await get_file(api, token, ticket["fileId"])
    assert found is not None
    assert (found["size"], found["sha256"]) == (len(content), digest)
    assert [f["id"] for f in await list_files(api, token)] == [ticket["fileId"]]
    assert (await api.http.get(found["downloadUrl"])).content == content


async def test_streamed_upload_with_the_wrong_sha256_is_refused_and_leaves_nothing(api: Api) -> None:
    token = await api.consumer("alice")
    content = os.urandom(100_000)
    ticket = await create_upload(api, token, name="x.bin", size=len(content), sha256="0" * 64)

    resp = await api.http.put(ticket["uploadUrl"], content=chunked(content))

    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "VALIDATION"
    assert await get_file(api, token, ticket["fileId"]) is None
    assert await list_files(api, token) == []
    assert stored_objects(api) == []


async def test_streamed_upload_with_the_wrong_size_is_refused_and_leaves_nothing(api: Api) -> None:
    token = await api.consumer("alice")
    content = os.urandom(100_000)
    short = await create_upload(api, token, name="short.bin", size=len(content) + 1)
    long = await create_upload(api, token, name="long.bin", size=len(content) - 1)

    for ticket in (short, long):
        resp = await api.http.put(ticket["uploadUrl"], content=chunked(content))
        assert resp.status_code == 400, resp.text
        assert await get_file(api, token, ticket["fileId"]) is None
    assert await list_files(api, token) == []
    assert stored_objects(api) == []


async def test_second_put_to_a_completed_upload_is_a_conflict(api: Api) -> None:
    token = await api.consumer("alice")
    ticket = await create_upload(api, token, name="once.txt", size=4)
    assert (await api.http.put(ticket["uploadUrl"], content=b"once")).status_code == 201

    again = await api.http.put(ticket["uploadUrl"], content=b"twice")

    assert again.status_code == 409
    found = await get_file(api, token, ticket["fileId"])
    assert found is not None
    assert (await api.http.get(found["downloadUrl"])).content == b"once"


async def test_put_with_a_tampered_signature_or_an_expired_url_is_not_found(api: Api) -> None:
    token = await api.consumer("alice")
    ticket = await create_upload(api, token, name="x.txt")
    url = ticket["uploadUrl"]
    signature = dict(p.split("=", 1) for p in urlsplit(url).query.split("&"))["signature"]
    tampered = with_query(url, signature=("0" if signature[0] != "0" else "1") + signature[1:])
    expired, _ = api.services.signer.url("PUT", ticket["fileId"], ttl=-60)

    assert (await api.http.put(tampered, content=b"data")).status_code == 404
    assert (await api.http.put(expired, content=b"data")).status_code == 404
    assert (await api.http.put(with_query(url, expires="99999999999"), content=b"data")).status_code == 404
    assert await get_file(api, token, ticket["fileId"]) is None
    assert stored_objects(api) == []


async def test_streamed_upload_without_announced_size_keeps_the_token_limit(api: Api) -> None:
    token = await api.consumer("carol", ("small-input",))
    ticket = await create_upload(api, token, name="x.bin")
    assert ticket["__typename"] == "UploadTicket"

    resp = await api.http.put(ticket["uploadUrl"], content=chunked(os.urandom(2048), 512))

    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await list_files(api, token) == []
    assert stored_objects(api) == []


async def test_announcing_an_upload_over_the_limit_is_refused(api: Api) -> None:
    token = await api.consumer("carol", ("small-input",))
    refused = await create_upload(api, token, name="x.bin", size=2048)
    assert refused["__typename"] == "ValidationError"
    assert refused["code"] == "PAYLOAD_TOO_LARGE"
    negative = await create_upload(api, token, name="x.bin", size=-1)
    assert negative["__typename"] == "ValidationError"
    assert negative["field"] == "size"


# -- size limits -------------------------------------------------------------------------------------------


async def test_multipart_upload_over_the_slot_limit_is_a_typed_error_and_leaves_nothing(api: Api) -> None:
    token = await api.consumer("carol", ("small-input",))

    resp = await multipart(api, token, os.urandom(2048))

    assert resp.status_code == 200
    result = resp.json()["data"]["uploadFile"]
    assert result["__typename"] == "ValidationError"
    assert result["code"] == "PAYLOAD_TOO_LARGE"
    assert "1024" in result["message"]
    assert await list_files(api, token) == []
    assert stored_objects(api) == []


async def test_multipart_upload_over_the_global_limit_is_a_typed_error(
    tmp_path: Path, database_url: str
) -> None:
    async with running_api(tmp_path, database_url=database_url, max_upload_size=1024) as api:
        token = await api.consumer("alice")

        resp = await multipart(api, token, os.urandom(2048))

        result = resp.json()["data"]["uploadFile"]
        assert (result["__typename"], result["code"]) == ("ValidationError", "PAYLOAD_TOO_LARGE")
        assert await list_files(api, token) == []
        assert stored_objects(api) == []


async def test_multipart_upload_announcing_more_than_the_limit_is_refused_413_before_reading(
    tmp_path: Path,
    database_url: str,
) -> None:
    async with running_api(tmp_path, database_url=database_url, max_upload_size=1024) as api:
        token = await api.consumer("alice")

        resp = await multipart(api, token, os.urandom(1024 * 1024 + 4096))

        assert resp.status_code == 413
        assert resp.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
        assert await list_files(api, token) == []
        assert stored_objects(api) == []
        # The refused request did not take the server down.
        assert (await api.upload(token, b"small"))["__typename"] == "File"


async def test_a_multipart_upload_without_content_length_is_refused_411(api: Api) -> None:
    token = await api.consumer("alice")
    body = b'--b\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{}\r\n--b--\r\n'
    resp = await api.http.post(
        "/graphql",
        content=chunked(body, 16),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert resp.status_code == 411
    assert stored_objects(api) == []


# -- deletion ----------------------------------------------------------------------------------------------


async def test_delete_file_removes_it_and_its_download_url(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"to be deleted")
    found = await get_file(api, token, uploaded["id"])
    assert found is not None

    data = await api.data(DELETE_FILE, {"id": uploaded["id"]}, token=token)

    assert data["deleteFile"] == {"__typename": "DeletedFile", "id": uploaded["id"]}
    assert await get_file(api, token, uploaded["id"]) is None
    assert await list_files(api, token) == []
    assert (await api.http.get(found["downloadUrl"])).status_code == 404
    assert stored_objects(api) == []
    again = await api.data(DELETE_FILE, {"id": uploaded["id"]}, token=token)
    assert again["deleteFile"]["__typename"] == "NotFoundError"


async def test_deleting_an_input_of_a_live_job_is_a_conflict(api: Api) -> None:
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"needed by the job\n")
    created = await api.create_job(token, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 30})
    await api.wait_for(token, created["id"], {"RUNNING"})

    data = await api.data(DELETE_FILE, {"id": uploaded["id"]}, token=token)

    assert data["deleteFile"]["__typename"] == "ConflictError"
    assert data["deleteFile"]["code"] == "CONFLICT"
    assert await get_file(api, token, uploaded["id"]) is not None
    await api.data(
        "mutation($id: ID!) { cancelJob(id: $id) { __typename } }", {"id": created["id"]}, token=token
    )
    await api.wait_for(token, created["id"])
    deleted = await api.data(DELETE_FILE, {"id": uploaded["id"]}, token=token)
    assert deleted["deleteFile"]["__typename"] == "DeletedFile"


async def test_deleting_an_input_of_a_queued_job_is_a_conflict(tmp_path: Path, database_url: str) -> None:
    async with running_api(tmp_path, database_url=database_url, max_running_jobs_per_consumer=1) as api:
        token = await api.consumer("alice")
        blocker = await api.create_job(token, parameters={"SLEEPTIME": 30})
        await api.wait_for(token, blocker["id"], {"RUNNING"})
        uploaded = await api.upload(token, b"waits in the queue\n")
        queued = await api.create_job(token, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 0})
        assert (await api.job(token, queued["id"]) or {})["state"] == "QUEUED"

        data = await api.data(DELETE_FILE, {"id": uploaded["id"]}, token=token)

        assert data["deleteFile"]["__typename"] == "ConflictError"
