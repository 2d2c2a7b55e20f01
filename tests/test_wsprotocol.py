"""The lean websocket protocol: it forgets the handshake once accepted, and its inbox and flag wait
like asyncio's queue and event."""

from __future__ import annotations

import asyncio
import contextlib

from graphql_api.wsprotocol import Flag, Inbox, LeanWebSocketProtocol
from tests.support.api import Api
from tests.support.ws import connect


async def test_an_accepted_websocket_keeps_no_handshake_and_still_serves_its_operations(api: Api) -> None:
    token = await api.consumer("lean")
    async with connect(api.url, token) as conn:
        sockets = [
            p for p in api.server.server.server_state.connections if isinstance(p, LeanWebSocketProtocol)
        ]
        assert len(sockets) == 1
        assert not hasattr(sockets[0], "request")
        assert not hasattr(sockets[0], "response")
        op = await conn.subscribe("subscription { jobEvents { jobId state } }")
        job_id = (await api.create_job(token))["id"]
        assert (await op.next())["jobEvents"]["jobId"] == job_id


async def test_the_inbox_hands_items_in_order_to_a_waiting_reader() -> None:
    inbox = Inbox()
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"type": "websocket.connect"})
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    assert await reader == {"type": "websocket.connect"}
    assert not inbox.empty()
    assert await inbox.get() == {"type": "websocket.disconnect", "code": 1000}
    assert inbox.empty()


async def test_a_cancelled_reader_loses_no_item_for_the_other_reader() -> None:
    inbox = Inbox()
    first, second = asyncio.create_task(inbox.get()), asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    first.cancel()
    inbox.put_nowait({"type": "websocket.connect"})
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert await second == {"type": "websocket.connect"}


async def test_the_flag_releases_its_waiters_when_set() -> None:
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]
    flag.clear()
    assert not flag.is_set()
