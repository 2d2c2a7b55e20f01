"""The exact ``graphql-transport-ws`` messages of a job's event stream, whose shared results are sent as
text made once for all subscribers: each operation's ``next`` messages carry its own id and only
``data``, in order, and its ``complete`` follows the terminal event."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.support.api import Api
from tests.support.ws import TRANSPORT_WS, handshake, ws_url

EVENTS = "subscription($id: ID) { jobEvents(jobId: $id) { seq state } }"
FULL_RUN = ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]


async def test_each_operation_gets_its_own_next_messages_then_complete(api: Api) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 1})
    async with websockets.connect(ws_url(api.url), subprotocols=[TRANSPORT_WS]) as ws:  # type: ignore[list-item]
        await handshake(ws, {"authorization": f"Bearer {token}"})
        for op in ("a", "b"):  # the same document: one shared result per event
            payload = {"query": EVENTS, "variables": {"id": created["id"]}}
            await ws.send(json.dumps({"id": op, "type": "subscribe", "payload": payload}))
        messages: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
        while any(not m or m[-1]["type"] != "complete" for m in messages.values()):
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            messages[message["id"]].append(message)
    stored = await api.services.store.events.events(created["id"])
    expected = [
        {"id": op, "type": "next", "payload": {"data": {"jobEvents": {"seq": e.seq, "state": e.state.value}}}}
        for e in stored
    ]
    for op, received in messages.items():
        assert received[:-1] == [{**m, "id": op} for m in expected]
        assert received[-1] == {"id": op, "type": "complete"}
    assert [e.state.value for e in stored] == FULL_RUN
