"""Quotas through the real API over a socket: a consumer past its stored bytes or its pending uploads gets
a typed QuotaExceededError from uploadFile and createUpload (never an internal error), and the API's own
upload URL answers 413 with the same code; nothing partial is kept."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.api import running_api


async def test_uploads_past_the_quota_are_refused_with_a_typed_error(tmp_path: Path) -> None:
    async with running_api(
        tmp_path, max_stored_bytes_per_consumer=1000, max_pending_uploads_per_consumer=1
    ) as api:
        token = await api.consumer("alice")
        assert (await api.upload(token, b"x" * 800))["__typename"] == "File"

        refused = await api.upload(token, b"y" * 300)

        assert (refused["__typename"], refused["code"]) == ("QuotaExceededError", "QUOTA_EXCEEDED")
        assert "limit of 1000 bytes" in refused["message"]
        mutation = (
            "mutation($n: String!, $s: Long) { createUpload(input: {name: $n, size: $s}) { __typename"
            " ... on UploadTicket { fileId uploadUrl } ... on Error { message code } } }"
        )
        ticket = (await api.data(mutation, {"n": "a.bin", "s": None}, token=token))["createUpload"]
        assert ticket["__typename"] == "UploadTicket"
        second = (await api.data(mutation, {"n": "b.bin", "s": 10}, token=token))["createUpload"]
        assert (second["__typename"], second["code"]) == ("QuotaExceededError", "QUOTA_EXCEEDED")
        async with httpx.AsyncClient() as direct:  # the API's own URL: no size was announced
            put = await direct.put(ticket["uploadUrl"], content=b"z" * 300)
        assert put.status_code == 413 and put.json()["error"]["code"] == "QUOTA_EXCEEDED"
        files = (await api.data("{ files(first: 10) { nodes { name size } } }", token=token))["files"][
            "nodes"
        ]
        assert files == [{"name": "input.txt", "size": 800}]
