"""Subscriptions over real websockets, in both protocols and on both databases: live events in order,
replay with ``since`` after a disconnect (no gap, no duplicate), log lines while the job runs, and each
subscriber's own selection of an event whose result is shared between identical selections."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.api import Api
from tests.support.ws import PROTOCOLS, StreamComplete, collect, connect

EVENTS = "subscription($id: ID, $since: Long) { jobEvents(jobId: $id, since: $since) { seq jobId state } }"
LOGS = "subscription($id: ID!, $follow: Boolean!) { jobLogs(jobId: $id, follow: $follow) { seq text } }"
FULL_RUN = ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]

pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)


async def test_job_events_arrive_live_from_queued_to_complete_in_order(api: Api, protocol: str) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 2})
    async with connect(api.url, token, protocol) as conn:
        op = await conn.subscribe(EVENTS, {"id": created["id"]})
        received: list[dict[str, Any]] = []
        while not received or received[-1]["state"] != "RUNNING":
            received.append((await op.next())["jobEvents"])
        # RUNNING reached us while the job was still running: it came live, not from a replay.
        still = await api.job(token, created["id"])
        assert still is not None and still["state"] == "RUNNING"
        received += [r["jobEvents"] for r in await collect(op)]  # ends after the terminal event
    assert [e["state"] for e in received] == FULL_RUN
    assert {e["jobId"] for e in received} == {created["id"]}
    seqs = [int(e["seq"]) for e in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    stored = await api.services.store.events.events(created["id"])
    assert seqs == [e.seq for e in stored]


async def test_replay_with_since_after_a_disconnect_has_no_gap_and_no_duplicate(
    api: Api, protocol: str
) -> None:
    token = await api.consumer("alice")
    jobs = [(await api.create_job(token, parameters={"SLEEPTIME": 1}))["id"] for _ in range(3)]
    received: list[dict[str, object]] = []
    async with connect(api.url, token, protocol) as conn:
        op = await conn.subscribe(EVENTS, {"since": 0})
        for _ in range(4):
            received.append((await op.next())["jobEvents"])
    # Disconnected; the jobs keep changing meanwhile.
    for job_id in jobs:
        await api.wait_for(token, job_id)
    async with connect(api.url, token, protocol) as conn:
        op = await conn.subscribe(EVENTS, {"since": received[-1]["seq"]})
        while sum(1 for e in received if e["state"] == "COMPLETE") < len(jobs):
            received.append((await op.next(timeout=30))["jobEvents"])
    seqs = [int(str(e["seq"])) for e in received]
    stored = await api.services.store.events.events_after(0)
    assert seqs == [e.seq for e in stored]  # every event once, in order
    for job_id in jobs:
        assert [e["state"] for e in received if e["jobId"] == job_id] == FULL_RUN


async def test_replay_of_one_job_since_its_first_event_resumes_where_the_client_left(
    api: Api, protocol: str
) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 1})
    async with connect(api.url, token, protocol) as conn:
        first = (await (await conn.subscribe(EVENTS, {"id": created["id"]})).next())["jobEvents"]
    assert first["state"] == "QUEUED"
    await api.wait_for(token, created["id"])
    async with connect(api.url, token, protocol) as conn:
        rest = await collect(await conn.subscribe(EVENTS, {"id": created["id"], "since": first["seq"]}))
    assert [r["jobEvents"]["state"] for r in rest] == FULL_RUN[1:]


async def test_log_lines_arrive_while_the_job_runs_and_the_stream_ends_with_it(
    api: Api, protocol: str
) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 3})
    async with connect(api.url, token, protocol) as conn:
        op = await conn.subscribe(LOGS, {"id": created["id"], "follow": True})
        lines: list[dict[str, Any]] = []
        while "progress 1/3" not in [line["text"] for line in lines]:
            lines.append((await op.next())["jobLogs"])
        during = await api.job(token, created["id"])
        assert during is not None and during["state"] == "RUNNING"  # the line came while it ran
        lines += [r["jobLogs"] for r in await collect(op)]
    texts = [line["text"] for line in lines]
    assert [t for t in texts if t.startswith("progress")] == ["progress 1/3", "progress 2/3", "progress 3/3"]
    assert texts[-1] == "done"
    assert [int(line["seq"]) for line in lines] == list(range(1, len(lines) + 1))


async def test_logs_of_a_finished_job_come_from_its_saved_log(api: Api, protocol: str) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    job = await api.wait_for(token, created["id"])
    saved = (await api.http.get(job["log"]["downloadUrl"])).text.splitlines()
    async with connect(api.url, token, protocol) as conn:
        for follow in (True, False):
            op = await conn.subscribe(LOGS, {"id": created["id"], "follow": follow})
            assert [r["jobLogs"]["text"] for r in await collect(op)] == saved


async def test_a_single_job_stream_of_a_finished_job_replays_and_ends(api: Api, protocol: str) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    await api.wait_for(token, created["id"])
    async with connect(api.url, token, protocol) as conn:
        everything = await collect(await conn.subscribe(EVENTS, {"id": created["id"]}))
        assert [r["jobEvents"]["state"] for r in everything] == FULL_RUN
        last = everything[-1]["jobEvents"]["seq"]
        op = await conn.subscribe(EVENTS, {"id": created["id"], "since": last})
        with pytest.raises(StreamComplete):
            await op.next()


async def test_subscribers_of_one_event_each_get_their_own_selection(api: Api, protocol: str) -> None:
    """The payload of an event is shared between subscribers only when the selection is the same."""
    token = await api.consumer("alice")
    selections = {
        "plain": ("subscription { jobEvents { seq state } }", {}),
        "aliased": ("subscription { jobEvents { s: seq jobId } }", {}),
        "skipping": (
            "subscription($skip: Boolean!) { jobEvents { seq state @skip(if: $skip) } }",
            {"skip": True},
        ),
        "keeping": (
            "subscription($skip: Boolean!) { jobEvents { seq state @skip(if: $skip) } }",
            {"skip": False},
        ),
    }
    async with connect(api.url, token, protocol) as conn:
        ops = {name: await conn.subscribe(query, args) for name, (query, args) in selections.items()}
        await asyncio.sleep(0.3)  # let the server register every subscription
        created = await api.create_job(token, parameters={"SLEEPTIME": 0})
        got = {name: (await op.next())["jobEvents"] for name, op in ops.items()}
    seq = got["plain"]["seq"]
    assert got["plain"] == {"seq": seq, "state": "QUEUED"}
    assert got["aliased"] == {"s": seq, "jobId": created["id"]}
    assert got["skipping"] == {"seq": seq}
    assert got["keeping"] == {"seq": seq, "state": "QUEUED"}
