"""Streams share their database reads: many subscribers checking one grant cost one query, a revocation
is seen at once despite that sharing, a stream starting "from now on" reads nothing, quiet streams of a
grant share one periodic re-check (which still ends them when the grant expires), and a pool too busy
to hand out a connection ends a stream with a typed UNAVAILABLE error instead of an internal one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from backends.storage.file import FileStorageBackend
from backends.workflow.host.local.backend import LocalWorkflowBackend
from core.auth import OPERATOR, Principal
from core.live.bus import EventBus, OrderedEventBus
from core.live.streams import AccessRevokedError, DatabaseBusyError, JobStreams
from core.models import utcnow
from core.store import Store
from core.store.engine import create_engine, migrate

SUBSCRIBERS = 200


def _streams(store: Store, bus: EventBus, tmp_path: Path, recheck: float = 60.0) -> JobStreams:
    storage = FileStorageBackend(tmp_path / "objects")
    backend = LocalWorkflowBackend(tmp_path / "jobs", storage)
    return JobStreams(store, bus, backend, storage, recheck_interval=recheck)


def _count_queries(store: Store) -> list[str]:
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", note)
    return statements


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await migrate(database_url)
    store = Store(create_engine(database_url))
    yield store
    await store.engine.dispose()


async def _principal(store: Store) -> Principal:
    consumer = await store.grants.create_consumer("c_alice", "alice")
    grant = await store.grants.create_grant("g_alice", consumer.id, "a", "hash-alice", None)
    return Principal(consumer_id=consumer.id, grant_ids=frozenset({grant.id}), asset_ids=frozenset({"a"}))


async def test_many_streams_checking_one_grant_cost_one_query(store: Store, tmp_path: Path) -> None:
    streams = _streams(store, EventBus(), tmp_path)
    principal = await _principal(store)
    queries = _count_queries(store)
    await asyncio.gather(*(streams.check_access(principal) for _ in range(SUBSCRIBERS)))
    assert len(queries) == 1
    await asyncio.gather(*(streams.check_access(principal) for _ in range(SUBSCRIBERS)))
    assert len(queries) == 1  # within the recheck interval, the read is reused


async def test_a_revocation_is_seen_at_once_despite_the_shared_read(store: Store, tmp_path: Path) -> None:
    bus = EventBus()
    streams = _streams(store, bus, tmp_path)
    principal = await _principal(store)
    await streams.check_access(principal)
    [grant_id] = principal.grant_ids
    await store.grants.update_grant(grant_id, state="DEPROVISIONED")
    await bus.revoke_grant(grant_id)
    with pytest.raises(AccessRevokedError):
        await streams.check_access(principal)


async def test_a_stream_from_now_on_starts_at_the_bus_without_reading(store: Store, tmp_path: Path) -> None:
    bus = OrderedEventBus(store)
    await bus.start()
    try:
        streams = _streams(store, bus, tmp_path)
        principal = await _principal(store)
        await streams.check_access(principal)
        queries = _count_queries(store)
        stream = streams.events(principal, None, None)
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)  # the stream is following by now
        assert not first.done()
        assert queries == []
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await bus.close()


async def test_a_busy_pool_ends_a_starting_stream_with_a_typed_error(
    database_url: str, tmp_path: Path
) -> None:
    await migrate(database_url)
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    store = Store(engine)
    streams = _streams(store, EventBus(), tmp_path)
    try:
        async with engine.connect():  # the only connection is taken
            with pytest.raises(DatabaseBusyError) as caught:
                await anext(streams.events(OPERATOR, None, None))
        assert caught.value.code == "UNAVAILABLE"
    finally:
        await engine.dispose()


async def test_quiet_streams_of_a_grant_share_one_recheck_that_ends_them_when_it_expires(
    store: Store, tmp_path: Path
) -> None:
    bus = OrderedEventBus(store)
    await bus.start()
    try:
        streams = _streams(store, bus, tmp_path, recheck=0.2)
        principal = await _principal(store)
        [grant_id] = principal.grant_ids
        following = [streams.events(principal, None, None) for _ in range(SUBSCRIBERS)]
        firsts = [asyncio.ensure_future(anext(stream)) for stream in following]
        queries = _count_queries(store)
        await asyncio.sleep(1.0)  # several re-check intervals pass, all streams quiet
        grant_reads = [q for q in queries if "FROM grant" in q.replace('"', "")]
        assert 1 <= len(grant_reads) < SUBSCRIBERS  # per interval, not per stream and interval
        await store.grants.update_grant(grant_id, expires_at=utcnow() - timedelta(seconds=1))
        ended = await asyncio.wait_for(asyncio.gather(*firsts, return_exceptions=True), 10)
        assert all(isinstance(e, AccessRevokedError) for e in ended)
        for stream in following:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await bus.close()
