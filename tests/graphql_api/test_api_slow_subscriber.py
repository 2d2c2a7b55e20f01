"""A subscriber that stops reading: the server keeps at most its queue bound of events for it, ends it
with an error naming the ``since`` to resume from, and a resumed subscription misses nothing."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import websockets

from core.models import utcnow
from core.store.tables import JobEventRow
from tests.support.api import Api, running_api
from tests.support.ws import PROTOCOLS, TRANSPORT_WS, connect, handshake, ws_url

QUEUE_BOUND = 8
BATCH = QUEUE_BOUND // 2
EVENTS = "subscription($since: Long) { jobEvents(since: $since) { seq state message } }"
# Large events fill the socket buffers between server and client in a few dozen events, not thousands.
MESSAGE = "x" * 4000
MAX_EVENTS = 60_000  # far more than the socket buffers hold; the test fails if no drop happened by then


async def _insert_events(api: Api, grant_id: str, consumer_id: str, count: int) -> None:
    """Events as the store writes them (one transaction), announced to the bus as the supervisor does."""
    now = utcnow()
    async with api.services.store.events.session() as s:
        for _ in range(count):
            s.add(
                JobEventRow(
                    job_id="j_flood",
                    consumer_id=consumer_id,
                    grant_id=grant_id,
                    state="QUEUED",
                    message=MESSAGE,
                    created_at=now,
                )
            )
        await s.commit()
    api.services.bus.publish(None)  # type: ignore[arg-type]  # a wake-up: the bus reads the store


async def _drained(api: Api, patience: float) -> None:
    """Wait until the server has passed every queued event on, for at most ``patience`` seconds: so the
    queue fills up only once the server cannot send any more (the client's socket is full)."""
    deadline = asyncio.get_running_loop().time() + patience
    while api.services.bus.queued and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)


async def _stalled_subscriber(api: Api, token: str, protocol: str) -> Any:
    """A client that subscribes and then reads nothing, with small socket buffers to push back soon."""
    sock = socket.socket()
    # A small receive buffer fills up soon; a small segment size (loopback's is 64 KiB) keeps TCP's
    # window updates flowing through so small a buffer once the client reads again.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect(("127.0.0.1", int(api.url.rsplit(":", 1)[1])))
    ws = await websockets.connect(ws_url(api.url), subprotocols=[protocol], sock=sock)  # type: ignore[list-item]
    await handshake(ws, {"authorization": f"Bearer {token}"})
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    await ws.send(json.dumps({"id": "1", "type": kind, "payload": {"query": EVENTS, "variables": {}}}))
    ws.transport.pause_reading()  # from now on nothing reads the socket: only kernel buffers fill up
    return ws


async def _read_until_error(ws: Any) -> tuple[list[int], dict[str, Any]]:
    seqs = []
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] in ("next", "data"):
            payload = message["payload"]
            if payload.get("errors"):
                return seqs, payload["errors"][0]
            seqs.append(int(payload["data"]["jobEvents"]["seq"]))
        elif message["type"] == "error":
            return seqs, message["payload"][0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_subscriber_that_stops_reading_is_dropped_at_its_queue_bound_and_can_resume(
    tmp_path: Path, database_url: str, protocol: str
) -> None:
    async with running_api(tmp_path, database_url=database_url, subscriber_queue_size=QUEUE_BOUND) as api:
        token = await api.consumer("alice")
        principal = await api.services.auth.authenticate(token)
        assert principal is not None and principal.consumer_id is not None
        [grant_id] = principal.grant_ids
        bus = api.services.bus
        ws = await _stalled_subscriber(api, token, protocol)
        try:
            while bus.subscriber_count == 0:
                await asyncio.sleep(0.01)
            inserted = 0
            while bus.dropped == 0:
                assert inserted < MAX_EVENTS, "the stalled subscriber was never dropped"
                await _insert_events(api, grant_id, principal.consumer_id, BATCH)
                inserted += BATCH
                await _drained(api, patience=0.2)
            # Dropped: nothing is kept for it any more, and no queue ever held more than the bound.
            assert bus.subscriber_count == 0
            assert bus.max_depth == QUEUE_BOUND
            await _insert_events(api, grant_id, principal.consumer_id, 50)  # more, after the drop

            ws.transport.resume_reading()
            received, error = await _read_until_error(ws)
        finally:
            await ws.close()
        # Usually it was served until its socket filled up; on a loaded machine the queue may fill before
        # the server sent anything, and then it resumes from where it started (0: a fresh database).
        resume_from = received[-1] if received else 0
        assert error["extensions"]["code"] == "SUBSCRIBER_TOO_SLOW"
        assert error["message"] == f"subscriber too slow; resume with since={resume_from}"
        async with connect(api.url, token, protocol) as conn:
            op = await conn.subscribe(EVENTS, {"since": resume_from})
            last = (await api.services.store.events.events_after(0, limit=MAX_EVENTS))[-1].seq
            while (received[-1] if received else 0) < last:
                received.append(int((await op.next())["jobEvents"]["seq"]))
        every = [e.seq for e in await api.services.store.events.events_after(0, limit=MAX_EVENTS)]
        assert received == every  # nothing lost, nothing twice, across the drop
