"""A GraphQL-over-websocket test client speaking either protocol, over a real socket.

``graphql-transport-ws`` (subscribe/next/error/complete) and the legacy ``graphql-ws``
(start/data/error/complete, keep-alives) differ only in message names; this client reads both into
one shape: :meth:`Operation.next` returns the ``data`` of the next result and raises
:class:`StreamError` for an error result, :class:`StreamComplete` when the server completed it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
PROTOCOLS = (TRANSPORT_WS, LEGACY_WS)


class StreamError(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(e.get("message")) for e in errors))
        self.errors = errors

    @property
    def code(self) -> str | None:
        ext = self.errors[0].get("extensions") or {}
        code: str | None = ext.get("code")
        return code


class StreamComplete(Exception):
    pass


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/graphql"


class Connection:
    def __init__(self, ws: ClientConnection, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self._ids = itertools.count(1)
        self._inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            op = message.get("id")
            if op in self._inboxes:
                await self._inboxes[op].put(message)

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> Operation:
        op = str(next(self._ids))
        self._inboxes[op] = asyncio.Queue()
        kind = "subscribe" if self.protocol == TRANSPORT_WS else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.ws.send(json.dumps({"id": op, "type": kind, "payload": payload}))
        return Operation(self, op)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


class Operation:
    def __init__(self, conn: Connection, op: str) -> None:
        self.conn = conn
        self.id = op

    async def next(self, timeout: float = 30) -> dict[str, Any]:
        message = await asyncio.wait_for(self.conn._inboxes[self.id].get(), timeout)
        kind = message["type"]
        if kind in ("next", "data"):
            payload = message["payload"]
            if payload.get("errors"):
                raise StreamError(payload["errors"])
            data: dict[str, Any] = payload["data"]
            return data
        if kind == "error":
            errors = message["payload"]
            raise StreamError(errors if isinstance(errors, list) else [errors])
        if kind == "complete":
            raise StreamComplete()
        raise AssertionError(f"unexpected message {message}")

    async def stop(self) -> None:
        kind = "complete" if self.conn.protocol == TRANSPORT_WS else "stop"
        await self.conn.ws.send(json.dumps({"id": self.id, "type": kind}))


async def handshake(ws: ClientConnection, payload: dict[str, Any] | None) -> None:
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if message["type"] == "connection_ack":
            return
        if message["type"] == "connection_error":
            raise StreamError([message.get("payload") or {"message": "connection_error"}])
        if message["type"] != "ka":
            raise AssertionError(f"unexpected message before the ack: {message}")


@asynccontextmanager
async def connect(
    http_url: str,
    token: str | None,
    protocol: str = TRANSPORT_WS,
    *,
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    small_buffers: bool = False,
) -> AsyncIterator[Connection]:
    """An acknowledged connection (token in the connection_init payload unless ``payload`` is given)."""
    init = payload if payload is not None else ({"authorization": f"Bearer {token}"} if token else {})
    options: dict[str, Any] = {"subprotocols": [protocol], "additional_headers": headers or {}}
    if small_buffers:  # a client that stops reading then pushes back on the server quickly
        sock = socket.create_connection(("127.0.0.1", int(http_url.rsplit(":", 1)[1])))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        options.update(sock=sock, max_queue=1)
    async with websockets.connect(ws_url(http_url), **options) as ws:
        assert ws.subprotocol == protocol
        await handshake(ws, init)
        conn = Connection(ws, protocol)
        try:
            yield conn
        finally:
            conn._reader.cancel()


async def collect(op: Operation, timeout: float = 30) -> list[dict[str, Any]]:
    """Every result until the server completes the operation."""
    results = []
    while True:
        try:
            results.append(await op.next(timeout))
        except StreamComplete:
            return results
