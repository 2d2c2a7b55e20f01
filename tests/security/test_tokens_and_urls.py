"""What one token, a revoked grant and a weak key can still do: a token holds a bounded number of
websockets, a revoked grant's signed URLs stop at once, and a short signing key is refused at start."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from core.auth import hash_token
from tests.support.api import Api, running_api
from tests.support.processes import serve_once
from tests.support.ws import LEGACY_WS, TRANSPORT_WS, connect, ws_url

CAP = 3
UPLOAD = """mutation($input: CreateUploadInput!) { createUpload(input: $input) {
  __typename ... on UploadTicket { fileId uploadUrl } } }"""


async def _revoke(api: Api, token: str) -> None:
    grant = await api.services.store.grants.grant_by_token_hash(hash_token(token))
    assert grant is not None
    await api.services.provisioning.deprovision_grant(grant.id, "revoked by the test")


async def _refusal(url: str, token: str, protocol: str = TRANSPORT_WS) -> tuple[int | None, str]:
    """Connect with ``token``: the close code and what the server said, or (None, "accepted")."""
    async with websockets.connect(ws_url(url), subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
        await ws.send(json.dumps(init))
        said = []
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] == "connection_ack":
                    return None, "accepted"
                said.append(json.dumps(message))
        except websockets.ConnectionClosed:
            pass
    return ws.close_code, " ".join([ws.close_reason or "", *said])


async def test_a_token_holds_only_its_share_of_websocket_connections(tmp_path: Path) -> None:
    async with running_api(tmp_path / "data", max_connections_per_token=CAP) as api:
        alice, bob = await api.consumer("alice"), await api.consumer("bob")
        async with contextlib.AsyncExitStack() as stack:
            for protocol in [TRANSPORT_WS, LEGACY_WS, TRANSPORT_WS][:CAP]:  # counted across both protocols
                await stack.enter_async_context(connect(api.url, alice, protocol))
            for protocol in (TRANSPORT_WS, LEGACY_WS):
                code, said = await _refusal(api.url, alice, protocol)
                assert code == 4403
                assert "too many open connections" in said, said
            async with connect(api.url, bob):  # another token is not affected
                pass
        async with connect(api.url, alice):  # closed connections give their place back
            pass


async def test_a_revoked_token_is_refused_at_its_next_connect_at_once(api: Api) -> None:
    """Connect checks are remembered for a moment; a revocation must not be hidden by that memory."""
    token = await api.consumer("alice")
    async with connect(api.url, token):  # its check is now remembered
        pass
    await _revoke(api, token)
    code, said = await _refusal(api.url, token)
    assert code == 4403
    assert "revoked" in said, said


@pytest.fixture
async def keeping_api(tmp_path: Path) -> AsyncIterator[Api]:
    """Deprovisioning keeps the files here, so only the revocation itself can stop their URLs."""
    async with running_api(tmp_path / "data", deprovision_retention="keep") as api:
        yield api


async def test_a_revoked_grants_download_url_stops_at_once(keeping_api: Api) -> None:
    api = keeping_api
    token = await api.consumer("alice")
    uploaded = await api.upload(token, b"secret results")
    query = "query($id: ID!) { file(id: $id) { downloadUrl } }"
    url = (await api.data(query, {"id": uploaded["id"]}, token=token))["file"]["downloadUrl"]
    async with httpx.AsyncClient() as http:
        assert (await http.get(url)).content == b"secret results"
        await _revoke(api, token)
        refused = await http.get(url)
    assert refused.status_code == 404
    assert b"secret results" not in refused.content


async def test_a_revoked_grants_upload_url_stops_at_once(api: Api) -> None:
    token = await api.consumer("alice")
    data = await api.data(UPLOAD, {"input": {"name": "late.bin", "size": 4}}, token=token)
    ticket = data["createUpload"]
    await _revoke(api, token)
    async with httpx.AsyncClient() as http:
        refused = await http.put(ticket["uploadUrl"], content=b"late")
    assert refused.status_code == 404


def test_a_signing_key_shorter_than_32_bytes_is_refused_at_start(tmp_path: Path) -> None:
    done = serve_once(tmp_path, WML_SECRET_KEY="short-but-not-32")
    assert done.returncode == 2
    assert "WML_SECRET_KEY" in done.stderr and "32 bytes" in done.stderr
    assert "short-but-not-32" not in done.stderr
