"""A small client of the GraphQL API (HTTP, and subscriptions over ``graphql-transport-ws``), used by
``wml demo``, ``wml watch`` and the client commands (``wml upload``, ``run``, ``jobs``, ...).

Every failure it raises is an :class:`ApiError` with a stable ``code``: the API's own (an error payload's
``code``, a top-level error's ``extensions.code``), or one of ours for the transport (``UNREACHABLE``,
``HTTP_<status>``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

from wml.client import documents as Q
from wml.client.transfer import ProgressReader

SUBPROTOCOL = Subprotocol("graphql-transport-ws")
UNREACHABLE = "UNREACHABLE"


class ApiError(Exception):
    """The API answered with top-level errors or an error payload, or could not be reached."""

    def __init__(self, message: str, code: str = "API_ERROR") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message if self.code == "API_ERROR" else f"{self.code}: {self.message}"

    @property
    def unreachable(self) -> bool:
        """The server was not reached or failed (not a refusal of this request)."""
        return self.code == UNREACHABLE or self.code.startswith("HTTP_5")


class Client:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _post(self, **request: Any) -> dict[str, Any]:
        """POST /graphql; the ``data`` of an answer without top-level errors."""
        try:
            resp = await self._http.post("/graphql", **request)
        except httpx.TransportError as e:
            raise ApiError(f"cannot reach {self.base_url}: {e or type(e).__name__}", UNREACHABLE) from None
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if body.get("errors"):  # with 200, or with the status of a refused request (401, 413, ...)
            first = body["errors"][0]
            code = (first.get("extensions") or {}).get("code", "GRAPHQL_ERROR")
            raise ApiError("; ".join(e.get("message", "?") for e in body["errors"]), code)
        if resp.status_code != 200 or "data" not in body:
            raise ApiError(f"HTTP {resp.status_code}: {resp.text[:300]}", f"HTTP_{resp.status_code}")
        data: dict[str, Any] = body["data"]
        return data

    async def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._post(json={"query": document, "variables": variables or {}})

    # -- files -------------------------------------------------------------------------------------

    async def upload(
        self, path: Path, name: str | None = None, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Upload a file with the GraphQL multipart request spec; returns the File. ``progress`` is called
        with each chunk's size as it is sent."""
        operations = {"query": Q.UPLOAD_FILE, "variables": {"file": None, "name": name or path.name}}
        with ProgressReader(path, progress) as fh:
            data = await self._post(
                data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
                files={"0": (path.name, fh, "application/octet-stream")},
            )
        return _payload(data["uploadFile"])

    async def create_upload(self, name: str, size: int, sha256: str) -> dict[str, Any]:
        """Announce a large upload; its UploadTicket (``fileId``, ``uploadUrl``, ``method``)."""
        data = await self.query(Q.CREATE_UPLOAD, {"input": {"name": name, "size": size, "sha256": sha256}})
        return _payload(data["createUpload"])

    async def complete_upload(self, file_id: str) -> dict[str, Any]:
        data = await self.query(Q.COMPLETE_UPLOAD, {"id": file_id})
        return _payload(data["completeUpload"])

    async def files(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._pages(Q.FILES, "files", limit, {})

    async def file(self, file_id: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = (await self.query(Q.FILE, {"id": file_id}))["file"]
        return found

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        return _payload((await self.query(Q.DELETE_FILE, {"id": file_id}))["deleteFile"])

    # -- jobs --------------------------------------------------------------------------------------

    async def create_job(
        self,
        asset_id: str,
        inputs: dict[str, str],
        parameters: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        data = await self.query(
            Q.CREATE_JOB,
            {
                "input": {
                    "assetId": asset_id,
                    "inputs": [{"slot": s, "fileId": f} for s, f in inputs.items()],
                    "parameters": parameters or {},
                    "name": name,
                    "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
                }
            },
        )
        return _payload(data["createJob"])

    async def job(self, job_id: str) -> dict[str, Any] | None:
        job: dict[str, Any] | None = (await self.query(Q.JOB, {"id": job_id}))["job"]
        return job

    async def jobs(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return await self._pages(Q.JOBS, "jobs", limit, {"state": state})

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return _payload((await self.query(Q.CANCEL_JOB, {"id": job_id}))["cancelJob"])

    async def _pages(
        self, document: str, field: str, limit: int, variables: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` nodes of a connection, following its cursors."""
        nodes: list[dict[str, Any]] = []
        after = None
        while len(nodes) < limit:
            page = (
                await self.query(
                    document, {**variables, "first": min(100, limit - len(nodes)), "after": after}
                )
            )[field]
            nodes.extend(page["nodes"])
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
        return nodes

    # -- operator ----------------------------------------------------------------------------------

    async def consumers(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.query(Q.CONSUMERS))["consumers"]
        return found

    async def grants(self, consumer_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (
            await self.query(Q.GRANTS, {"consumerId": consumer_id, "state": state})
        )["grants"]
        return found

    async def create_consumer(
        self, name: str, asset_ids: list[str], expires_in: int | None
    ) -> dict[str, Any]:
        variables = {"input": {"name": name, "assetIds": asset_ids, "expiresIn": expires_in}}
        return _payload((await self.query(Q.CREATE_CONSUMER, variables))["createConsumer"])

    async def revoke_consumer(self, consumer_id: str) -> dict[str, Any]:
        return _payload((await self.query(Q.REVOKE_CONSUMER, {"id": consumer_id}))["revokeConsumer"])

    # -- subscriptions -----------------------------------------------------------------------------

    async def subscribe(self, document: str, variables: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """The ``data`` of each result of a subscription, until the server completes it."""
        url = "ws" + self.base_url.removeprefix("http") + "/graphql"
        try:
            async with websockets.connect(
                url,
                subprotocols=[SUBPROTOCOL],
                open_timeout=self._timeout,
            ) as ws:
                await ws.send(
                    json.dumps(
                        {"type": "connection_init", "payload": {"authorization": f"Bearer {self._token}"}}
                    )
                )
                async with asyncio.timeout(self._timeout):
                    ack = json.loads(await ws.recv())
                if ack.get("type") != "connection_ack":
                    raise ApiError(f"the server did not accept the connection: {ack}")
                payload = {"query": document, "variables": variables or {}}
                await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "ping":
                        await ws.send(json.dumps({"type": "pong"}))
                    elif message["type"] == "complete":
                        return
                    elif message["type"] == "error" or message["payload"].get("errors"):
                        errors = (
                            message["payload"] if message["type"] == "error" else message["payload"]["errors"]
                        )
                        code = (errors[0].get("extensions") or {}).get("code", "GRAPHQL_ERROR")
                        raise ApiError("; ".join(e.get("message", "?") for e in errors), code)
                    elif message["type"] == "next":
                        yield message["payload"]["data"]
        except websockets.ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == 4403:
                if "connections" in e.rcvd.reason:  # the token is good but holds too many connections
                    raise ApiError(
                        f"the server refused the connection: {e.rcvd.reason}", "TOO_MANY_CONNECTIONS"
                    ) from None
                raise ApiError(
                    "the server refused the token (invalid, expired or revoked)", "UNAUTHENTICATED"
                ) from None
            raise ApiError(f"the subscription's connection closed: {e}", UNREACHABLE) from None
        except (OSError, websockets.InvalidHandshake, TimeoutError) as e:
            raise ApiError(f"cannot reach {self.base_url}: {e or type(e).__name__}", UNREACHABLE) from None
        raise ApiError("the subscription's connection closed before the stream completed", UNREACHABLE)

    async def download(self, url: str) -> bytes:
        resp = await self._http.get(url)
        if resp.status_code != 200:
            raise ApiError(f"download failed: HTTP {resp.status_code}", f"HTTP_{resp.status_code}")
        return resp.content


def _payload(value: dict[str, Any]) -> dict[str, Any]:
    """The object of a union payload, or its error member raised."""
    if "code" in value and "message" in value and "id" not in value:
        raise ApiError(value["message"], value["code"])
    return value
