"""The fan-out's hold on Strawberry's internals (the bound on strawberry-graphql in pyproject.toml).

:mod:`graphql_api.fanout` overrides methods of Strawberry's executor and websocket handler. If a release
renames or stops calling one of them, every subscription still works through the ordinary path, so the
end-to-end tests would pass while the fan-out silently stopped. These tests fail instead: live events
must be written by the bus's own loop (``deliver``), and replayed ones through the shared text path.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import models as M
from graphql_api.fanout import SendNextNow, SharedEventExecutor
from tests.support.api import Api
from tests.support.ws import collect, connect

EVENTS = "subscription($id: ID) { jobEvents(jobId: $id) { seq state } }"


async def test_live_events_are_written_by_the_bus_itself(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    original = SharedEventExecutor._deliver_now

    def spy(self: SharedEventExecutor, send_now: SendNextNow, variables: Any, event: M.JobEvent) -> bool:
        done = original(self, send_now, variables, event)
        if done:
            written.append(event.seq)
        return done

    monkeypatch.setattr(SharedEventExecutor, "_deliver_now", spy)
    token = await api.consumer("fanout")
    async with connect(api.url, token) as conn:
        op = await conn.subscribe("subscription { jobEvents { seq state } }")
        await api.create_job(token, parameters={"SLEEPTIME": 0})
        received: list[dict[str, Any]] = []
        while not received or received[-1]["state"] != "COMPLETE":
            received.append((await op.next())["jobEvents"])
    assert written, "no live event took the bus's direct path"
    assert set(written) <= {e["seq"] for e in received}


async def test_replayed_events_are_serialised_once_for_all_subscribers(api: Api) -> None:
    token = await api.consumer("replay")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    await api.wait_for(token, created["id"])
    SharedEventExecutor._texts.clear()
    async with connect(api.url, token) as conn:
        first = await conn.subscribe(EVENTS, {"id": created["id"]})
        second = await conn.subscribe(EVENTS, {"id": created["id"]})
        a, b = await collect(first), await collect(second)
    assert a == b and len(a) == 4
    assert len(SharedEventExecutor._texts) == 4, "replayed events did not take the shared text path"
