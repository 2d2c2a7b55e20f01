"""completeUpload on the file backend: the PUT route completes an announced upload, so completing it is
a no-op that returns the file; completing one whose bytes have not arrived is a conflict."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.support.api import Api

CREATE_UPLOAD = """mutation($input: CreateUploadInput!) { createUpload(input: $input) { __typename
  ... on UploadTicket { fileId uploadUrl } ... on Error { message code } } }"""
COMPLETE_UPLOAD = """mutation($id: ID!) { completeUpload(fileId: $id) { __typename
  ... on File { id size sha256 } ... on Error { message code } } }"""


async def complete(api: Api, token: str, file_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await api.data(COMPLETE_UPLOAD, {"id": file_id}, token=token))["completeUpload"]
    return result


async def test_complete_after_the_put_returns_the_file_and_before_it_is_a_conflict(api: Api) -> None:
    token = await api.consumer("alice")
    content = b"announced bytes"
    announced = {"name": "a.bin", "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    ticket = (await api.data(CREATE_UPLOAD, {"input": announced}, token=token))["createUpload"]
    assert ticket["uploadUrl"].startswith(api.url)  # no presigned storage URL: the API's own PUT route

    early = await complete(api, token, ticket["fileId"])
    assert early["__typename"] == "ConflictError"

    assert (await api.http.put(ticket["uploadUrl"], content=content)).status_code == 201
    completed = await complete(api, token, ticket["fileId"])
    assert completed == {
        "__typename": "File",
        "id": ticket["fileId"],
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


async def test_complete_of_an_unknown_or_foreign_file_is_not_found(api: Api) -> None:
    alice, bob = await api.consumer("alice"), await api.consumer("bob")
    uploaded = await api.upload(alice, b"alice's")

    assert (await complete(api, bob, uploaded["id"]))["__typename"] == "NotFoundError"
    assert (await complete(api, alice, "f-missing"))["__typename"] == "NotFoundError"
    assert (await complete(api, alice, uploaded["id"]))["__typename"] == "File"  # already READY: a no-op
