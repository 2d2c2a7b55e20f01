"""A small consumer-side client of the GraphQL API (HTTP, and subscriptions over ``graphql-transport-ws``),
used by ``wml demo`` and ``wml watch``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("graphql-transport-ws")


class ApiError(Exception):
    """The API answered with top-level errors or an error payload."""


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

    async def query(self, document: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = await self._http.post("/graphql", json={"query": document, "variables": variables or {}})
        if resp.status_code != 200:
            raise ApiError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        if body.get("errors"):
            raise ApiError("; ".join(e.get("message", "?") for e in body["errors"]))
        data: dict[str, Any] = body["data"]
        return data

    async def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload a file with the GraphQL multipart request spec; returns the File."""
        operations = {
            "query": "mutation($file: Upload!, $name: String) { uploadFile(file: $file, name: $name) {"
            " __typename ... on File { id name size sha256 } ... on Error { message code } } }",
            "variables": {"file": None, "name": name or path.name},
        }
        with path.open("rb") as fh:
            resp = await self._http.post(
                "/graphql",
                data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
                files={"0": (path.name, fh, "application/octet-stream")},
            )
        if resp.status_code != 200:
            raise ApiError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        body = resp.json()
        if body.get("errors"):
            raise ApiError("; ".join(e.get("message", "?") for e in body["errors"]))
        return _payload(body["data"]["uploadFile"])

    async def create_job(
        self, asset_id: str, inputs: dict[str, str], parameters: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data = await self.query(
            "mutation($input: CreateJobInput!) { createJob(input: $input) {"
            " __typename ... on Job { id state } ... on Error { message code } } }",
            {
                "input": {
                    "assetId": asset_id,
                    "inputs": [{"slot": s, "fileId": f} for s, f in inputs.items()],
                    "parameters": parameters or {},
                }
            },
        )
        return _payload(data["createJob"])

    async def job(self, job_id: str) -> dict[str, Any] | None:
        data = await self.query(
            "query($id: ID!) { job(id: $id) { id state reason message exitCode logTail"
            " outputs { id name size sha256 downloadUrl } log { id downloadUrl } } }",
            {"id": job_id},
        )
        job: dict[str, Any] | None = data["job"]
        return job

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
                        raise ApiError("; ".join(e.get("message", "?") for e in errors))
                    elif message["type"] == "next":
                        yield message["payload"]["data"]
        except websockets.ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == 4403:
                if "connections" in e.rcvd.reason:  # the token is good but holds too many connections
                    raise ApiError(f"the server refused the connection: {e.rcvd.reason}") from None
                raise ApiError("the server refused the token (invalid, expired or revoked)") from None
            raise ApiError(f"the subscription's connection closed: {e}") from None
        raise ApiError("the subscription's connection closed before the stream completed")

    async def download(self, url: str) -> bytes:
        resp = await self._http.get(url)
        if resp.status_code != 200:
            raise ApiError(f"download failed: HTTP {resp.status_code}")
        return resp.content


def _payload(value: dict[str, Any]) -> dict[str, Any]:
    if "code" in value and "message" in value and "id" not in value:
        raise ApiError(f"{value['code']}: {value['message']}")
    return value
