"""A connection storm (every client reconnecting at once, the normal case after a restart) over real
websockets: thousands of connects at once are all acknowledged, slower if need be but never refused or
dropped; each token's grant is read about once, not once per connection, and only a few such reads
run at once, so the storm cannot drain the database pool."""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from pathlib import Path
from typing import Any, cast

import pytest
import websockets
from websockets.typing import Subprotocol

from core.auth import CONNECT_READS, RECENT_TTL
from tests.support.api import running_api
from tests.support.ws import TRANSPORT_WS, ws_url

CONNECTIONS = 2500
TOKENS = 25
EVENTS = "subscription { jobEvents { seq jobId state } }"

pytestmark = pytest.mark.slow


async def _acknowledged(url: str, token: str, opened: list[object], release: asyncio.Event) -> str:
    """Connect, init with ``token``, subscribe; the first message's type, with the socket held open until
    ``release`` (so the server holds every connection at once)."""
    protocol = cast(Subprotocol, TRANSPORT_WS)
    async with websockets.connect(url, subprotocols=[protocol], open_timeout=120) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        answer = json.loads(await asyncio.wait_for(ws.recv(), 120))["type"]
        if answer == "connection_ack":
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": EVENTS}}))
        opened.append(ws)
        await release.wait()
        return str(answer)


class CountedReads:
    """Wraps the store's token lookup: how many reads, and the most at once."""

    def __init__(self, read: Any) -> None:
        self._read = read
        self.calls = 0
        self.running = 0
        self.most_at_once = 0

    async def __call__(self, digest: str) -> Any:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            return await self._read(digest)
        finally:
            self.running -= 1


async def test_thousands_of_connects_at_once_are_all_acknowledged(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 3 * CONNECTIONS:  # both ends of every connection live in this process
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * CONNECTIONS), hard))
    async with running_api(tmp_path / "data", max_connections_per_token=CONNECTIONS) as api:
        tokens = [await api.consumer(f"consumer-{i}") for i in range(TOKENS)]
        grants = api.services.store.grants
        reads = CountedReads(grants.grant_by_token_hash)
        grants.grant_by_token_hash = reads  # type: ignore[method-assign]
        url, opened, release = ws_url(api.url), [], asyncio.Event()
        started = time.monotonic()
        clients = [
            asyncio.ensure_future(_acknowledged(url, tokens[i % TOKENS], opened, release))
            for i in range(CONNECTIONS)
        ]
        while len(opened) < CONNECTIONS and not any(c.done() for c in clients):
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        release.set()
        answers = await asyncio.gather(*clients)
    assert answers == ["connection_ack"] * CONNECTIONS
    # One read per token per remembered period at most (single flight), not one per connection ...
    assert reads.calls <= TOKENS * (math.ceil(elapsed / RECENT_TTL) + 1), (reads.calls, elapsed)
    # ... and only a few at once: the pool (SQLite's is 5 + 10) keeps room for everything else.
    assert reads.most_at_once <= CONNECT_READS
