"""Websocket connect checks under a connection storm: one token's concurrent checks share one read, reads
of distinct tokens are admitted a few at a time (the rest wait, none fails), and a revocation that lands
during a shared read still refuses every connect that waited on it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from core.auth import Authenticator, hash_token
from core.models import Grant, GrantState, utcnow


class SlowGrants:
    """``grant_by_token_hash`` that waits for ``release`` and records how many reads run at once."""

    def __init__(self, tokens: list[str]) -> None:
        self.release = asyncio.Event()
        self.reads = 0
        self.running = 0
        self.most_at_once = 0
        self._grants = {
            hash_token(token): Grant(
                id=f"g{i}",
                consumer_id=f"c{i}",
                asset_id="a",
                state=GrantState.ACTIVE,
                created_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=1),
            )
            for i, token in enumerate(tokens)
        }

    async def grant_by_token_hash(self, digest: str) -> Grant | None:
        self.reads += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await self.release.wait()
            return self._grants.get(digest)
        finally:
            self.running -= 1


def authenticator(grants: SlowGrants, **kwargs: Any) -> Authenticator:
    store: Any = SimpleNamespace(grants=grants)
    return Authenticator(store, "admin-token", **kwargs)


async def test_concurrent_connects_with_one_token_make_one_read() -> None:
    grants = SlowGrants(["wml_one"])
    auth = authenticator(grants)
    checks = [asyncio.ensure_future(auth.authenticate_connection("wml_one")) for _ in range(500)]
    await asyncio.sleep(0.05)
    grants.release.set()
    principals = await asyncio.gather(*checks)
    assert grants.reads == 1
    assert {p.grant_ids for p in principals if p is not None} == {frozenset({"g0"})}
    assert all(p is not None for p in principals)


async def test_a_storm_of_distinct_tokens_waits_its_turn_instead_of_failing() -> None:
    tokens = [f"wml_{i}" for i in range(40)]
    grants = SlowGrants(tokens)
    auth = authenticator(grants, connect_reads=3)
    checks = [asyncio.ensure_future(auth.authenticate_connection(t)) for t in tokens for _ in range(5)]
    await asyncio.sleep(0.05)
    assert grants.running == 3  # the others wait for admission, not for the connection pool
    grants.release.set()
    principals = await asyncio.gather(*checks)
    assert all(p is not None for p in principals)
    assert grants.most_at_once == 3
    assert grants.reads == len(tokens)


async def test_a_revocation_during_the_shared_read_refuses_every_waiter() -> None:
    grants = SlowGrants(["wml_one"])
    auth = authenticator(grants)
    checks = [asyncio.ensure_future(auth.authenticate_connection("wml_one")) for _ in range(10)]
    await asyncio.sleep(0.05)
    auth.forget_grant("g0")  # revoked while the read is under way
    grants.release.set()
    assert await asyncio.gather(*checks) == [None] * 10


async def test_a_client_that_leaves_does_not_cancel_the_read_others_wait_for() -> None:
    grants = SlowGrants(["wml_one"])
    auth = authenticator(grants)
    leaving = asyncio.ensure_future(auth.authenticate_connection("wml_one"))
    staying = asyncio.ensure_future(auth.authenticate_connection("wml_one"))
    await asyncio.sleep(0.05)
    leaving.cancel()
    grants.release.set()
    assert await staying is not None
    assert grants.reads == 1
