"""Who may subscribe to what, over real websockets in both protocols: a bad token is refused at
``connection_init`` (4403), another consumer's job is invisible, and revoking a grant ends its open
subscriptions at once."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
import websockets

from core.models import utcnow
from tests.support.api import Api, running_api
from tests.support.ws import LEGACY_WS, PROTOCOLS, Operation, StreamError, collect, connect, ws_url

EVENTS = "subscription($id: ID, $since: Long) { jobEvents(jobId: $id, since: $since) { seq jobId state } }"
LOGS = "subscription($id: ID!) { jobLogs(jobId: $id) { seq text } }"

pytestmark = pytest.mark.parametrize("protocol", PROTOCOLS)


async def _grant_id(api: Api, token: str) -> str:
    principal = await api.services.auth.authenticate(token)
    assert principal is not None
    [grant_id] = principal.grant_ids
    return grant_id


async def _error_of(op: Operation) -> StreamError:
    """The error that ends ``op``; an event or log line already on its way may come first, but the error
    must follow within 3 s, well under the 5 s recheck: only the pushed revocation is that fast."""
    while True:
        try:
            await op.next(timeout=3)
        except StreamError as e:
            return e


@pytest.mark.parametrize("payload", [{"authorization": "Bearer wml_not-a-token"}, {}, {"access-token": "x"}])
async def test_a_bad_or_missing_token_is_refused_at_init_with_4403(
    api: Api, protocol: str, payload: dict[str, str]
) -> None:
    async with websockets.connect(ws_url(api.url), subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        if protocol == LEGACY_WS:  # the legacy protocol says so in a message first
            assert json.loads(await ws.recv())["type"] == "connection_error"
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 4403


async def test_the_token_may_come_in_the_payload_or_the_handshake_header(api: Api, protocol: str) -> None:
    token = await api.consumer("alice")
    created = await api.create_job(token, parameters={"SLEEPTIME": 0})
    await api.wait_for(token, created["id"])
    ways = [
        {"payload": {"Authorization": f"Bearer {token}"}},
        {"payload": {"access-token": token}},
        {"payload": {}, "headers": {"Authorization": f"Bearer {token}"}},
    ]
    for way in ways:
        async with connect(api.url, None, protocol, **way) as conn:  # type: ignore[arg-type]
            events = await collect(await conn.subscribe(EVENTS, {"id": created["id"]}))
            assert events[-1]["jobEvents"]["state"] == "COMPLETE"


async def test_another_consumers_job_is_answered_like_an_unknown_one(api: Api, protocol: str) -> None:
    alice = await api.consumer("alice")
    bob = await api.consumer("bob")
    theirs = await api.create_job(alice, parameters={"SLEEPTIME": 0})
    mine = await api.create_job(bob, parameters={"SLEEPTIME": 0})
    for token, job in ((alice, theirs), (bob, mine)):
        await api.wait_for(token, job["id"])
    async with connect(api.url, bob, protocol) as conn:
        errors = {}
        for label, job_id in (("theirs", theirs["id"]), ("unknown", "j_0123456789abcdef0123456789abcdef")):
            for query, variables in ((EVENTS, {"id": job_id}), (LOGS, {"id": job_id})):
                op = await conn.subscribe(query, variables)
                with pytest.raises(StreamError) as caught:
                    await op.next()
                assert caught.value.code == "NOT_FOUND"
                errors[label, query] = str(caught.value).replace(job_id, "<id>")
        assert errors["theirs", EVENTS] == errors["unknown", EVENTS]
        assert errors["theirs", LOGS] == errors["unknown", LOGS]
        # Bob's stream of all his jobs replays only his own job's events.
        op = await conn.subscribe(EVENTS, {"since": 0})
        seen = [(await op.next())["jobEvents"] for _ in range(4)]
        assert {e["jobId"] for e in seen} == {mine["id"]}
        await op.stop()


async def test_revoking_a_grant_ends_its_open_subscriptions_at_once(api: Api, protocol: str) -> None:
    alice = await api.consumer("alice")
    bob = await api.consumer("bob")
    running = await api.create_job(alice, parameters={"SLEEPTIME": 30})
    await api.wait_for(alice, running["id"], {"RUNNING"})
    async with connect(api.url, alice, protocol) as conn, connect(api.url, bob, protocol) as other:
        streams = [
            await conn.subscribe(EVENTS, {}),
            await conn.subscribe(EVENTS, {"id": running["id"]}),
            await conn.subscribe(LOGS, {"id": running["id"]}),
        ]
        assert (await streams[1].next())["jobEvents"]["state"] == "QUEUED"
        bobs = await other.subscribe(EVENTS, {})
        await asyncio.sleep(0.3)  # let the server register every subscription

        grant_id = await _grant_id(api, alice)
        await api.services.store.grants.update_grant(grant_id, state="DEPROVISIONED")
        await api.services.bus.revoke_grant(grant_id)

        for op in streams:
            assert (await _error_of(op)).code == "ACCESS_REVOKED"
        later = await conn.subscribe(EVENTS, {})  # nor can the connection start anything new
        with pytest.raises(StreamError) as caught:
            await later.next(timeout=3)
        assert caught.value.code == "ACCESS_REVOKED"
        # Another consumer's subscription is untouched.
        bobs_job = await api.create_job(bob, parameters={"SLEEPTIME": 0})
        assert (await bobs.next())["jobEvents"]["jobId"] == bobs_job["id"]


async def test_a_grant_that_expires_ends_its_subscription_without_any_hook(
    tmp_path: Path, database_url: str, protocol: str
) -> None:
    async with running_api(tmp_path, database_url=database_url, stream_recheck_interval=0.2) as api:
        alice = await api.consumer("alice")
        async with connect(api.url, alice, protocol) as conn:
            op = await conn.subscribe(EVENTS, {})
            await asyncio.sleep(0.3)
            grant_id = await _grant_id(api, alice)
            await api.services.store.grants.update_grant(grant_id, expires_at=utcnow() - timedelta(seconds=1))
            with pytest.raises(StreamError) as caught:
                await op.next(timeout=5)
            assert caught.value.code == "ACCESS_REVOKED"
