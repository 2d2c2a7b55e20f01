"""The event bus on a real database: fan-out in seq order whoever publishes, events published here
fanned out without reading them back while gaps are read from the store, PostgreSQL events from another
replica (another engine, no local publish), and a listener that reconnects and catches up."""

from __future__ import annotations

import asyncio

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event as sa_event

from core.assets import Asset
from core.live.bus import EventBus, OrderedEventBus, Subscription
from core.live.postgres import PgEventBus, asyncpg_dsn
from core.models import Job, JobEvent, new_id, utcnow
from core.states import JobState
from core.store import Store
from core.store.engine import create_engine, migrate

ASSET = Asset.model_validate({"id": "a", "name": "A", "image": "img"})


async def _store(url: str) -> Store:
    await migrate(url)
    store = Store(create_engine(url))
    await store.assets.sync_assets([ASSET])
    return store


def _job(consumer_id: str) -> Job:
    return Job.queued(job_id=new_id("j"), consumer_id=consumer_id, grant_id="g_1", asset=ASSET)


async def _new_jobs(store: Store, count: int) -> list[JobEvent]:
    consumer = await store.grants.create_consumer(new_id("c"), "c")
    return list(await asyncio.gather(*(store.jobs.insert_job(_job(consumer.id)) for _ in range(count))))


async def _drain(sub: Subscription, count: int) -> list[int]:
    seqs: list[int] = []
    while len(seqs) < count:
        event = await sub.get(within=10)
        assert event is not None, f"only {len(seqs)} of {count} events arrived"
        seqs.append(event.seq)
    return seqs


def _count_event_reads(store: Store) -> list[str]:
    """Every SELECT on the event table the store's engine runs from now on (appended as it runs)."""
    reads: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_a: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "job_event" in statement:
            reads.append(statement)

    sa_event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
    return reads


async def _settled(sub: Subscription) -> None:
    """Let the bus's start-up read run (nothing arrives meanwhile)."""
    assert await sub.get(within=0.2) is None


async def test_events_published_out_of_order_reach_subscribers_in_seq_order(database_url: str) -> None:
    store = await _store(database_url)
    bus = OrderedEventBus(store)
    await bus.start()
    try:
        with bus.subscribe() as sub:
            events = await _new_jobs(store, 20)
            for event in reversed(events):  # publishers may announce in any order
                bus.publish(event)
            assert await _drain(sub, 20) == sorted(e.seq for e in events)
            assert await sub.get(within=0.2) is None  # and nothing twice
    finally:
        await bus.close()
        await store.engine.dispose()


async def test_events_published_here_in_seq_order_are_fanned_out_without_reading_them_back(
    database_url: str,
) -> None:
    store = await _store(database_url)
    consumer = await store.grants.create_consumer(new_id("c"), "c")
    bus = OrderedEventBus(store, catch_up_interval=60)  # no safety-net read during the test
    await bus.start()
    try:
        with bus.subscribe() as sub:
            await _settled(sub)
            reads, before = _count_event_reads(store), bus.store_reads
            published = []
            for _ in range(10):
                event = await store.jobs.insert_job(_job(consumer.id))
                bus.publish(event)
                published.append(event.seq)
            early = [await store.jobs.insert_job(_job(consumer.id)) for _ in range(5)]
            for event in reversed(early):  # ahead of a gap that this process fills itself
                bus.publish(event)
            published += [e.seq for e in early]
            assert await _drain(sub, 15) == published
            assert await sub.get(within=0.2) is None
            assert reads == [] and bus.store_reads == before
    finally:
        await bus.close()
        await store.engine.dispose()


async def test_an_event_this_process_never_published_is_read_from_the_store_in_its_place(
    database_url: str,
) -> None:
    store = await _store(database_url)
    consumer = await store.grants.create_consumer(new_id("c"), "c")
    bus = OrderedEventBus(store, catch_up_interval=60)  # no safety-net read during the test
    await bus.start()
    try:
        with bus.subscribe() as sub:
            await _settled(sub)
            reads, before = _count_event_reads(store), bus.store_reads
            elsewhere = await store.jobs.insert_job(_job(consumer.id))  # committed, never published here
            here = await store.jobs.insert_job(_job(consumer.id))
            bus.publish(here)  # a gap: the bus reads the store from its last seq
            assert await _drain(sub, 2) == [elsewhere.seq, here.seq]
            bus.publish(elsewhere)  # late: already fanned out, not twice
            after = await store.jobs.insert_job(_job(consumer.id))
            bus.publish(after)  # follows directly again: from memory
            assert await _drain(sub, 1) == [after.seq]
            assert await sub.get(within=0.2) is None
            assert len(reads) == bus.store_reads - before == 1
    finally:
        await bus.close()
        await store.engine.dispose()


async def test_a_full_queue_ends_the_subscriber_and_never_blocks_the_publisher() -> None:
    bus = EventBus(queue_size=3)
    with bus.subscribe() as slow, bus.subscribe() as fast:
        for seq in range(1, 6):
            bus.publish(JobEvent(seq, "j", "c", "g", JobState.QUEUED, None, None, None, utcnow()))
            assert (await fast.get()) is not None
        assert slow.overflowed and bus.dropped == 1 and bus.max_depth == 3
        assert bus.subscriber_count == 1  # only the fast one is left


async def test_a_waiting_subscriber_is_handed_events_directly_and_queues_what_it_declines() -> None:
    bus = EventBus()
    handed: list[int] = []

    def direct(event: JobEvent) -> bool:
        handed.append(event.seq)
        return event.seq != 2  # declines the second one

    with bus.subscribe() as sub:
        sub.direct = direct
        bus.publish(JobEvent(1, "j", "c", "g", JobState.QUEUED, None, None, None, utcnow()))
        assert len(sub) == 1 and handed == []  # not waiting: queued, never handed
        assert (await sub.get()) is not None
        waiting = asyncio.ensure_future(sub.get())
        await asyncio.sleep(0)
        for seq in (2, 3):
            bus.publish(JobEvent(seq, "j", "c", "g", JobState.QUEUED, None, None, None, utcnow()))
        # 2 was declined and queued (waking the task), so 3 is queued behind it, never handed.
        assert handed == [2]
        got = [await waiting, await sub.get()]
        assert [e.seq for e in got if e is not None] == [2, 3]
        waiting = asyncio.ensure_future(sub.get())
        await asyncio.sleep(0)
        bus.publish(JobEvent(4, "j", "c", "g", JobState.QUEUED, None, None, None, utcnow()))
        assert handed == [2, 4] and not waiting.done() and len(sub) == 0
        waiting.cancel()


async def test_events_committed_by_another_replica_arrive_once_in_order(pg_url: str) -> None:
    store, other = await _store(pg_url), await _store(pg_url)
    bus = PgEventBus(store, pg_url)
    await bus.start()
    try:
        with bus.subscribe() as sub:
            # Concurrent transactions on the other replica: seq order must still be commit order.
            events = await _new_jobs(other, 30)
            assert await _drain(sub, 30) == sorted(e.seq for e in events)
            assert await sub.get(within=0.2) is None
    finally:
        await bus.close()
        await store.engine.dispose()
        await other.engine.dispose()


async def test_the_listener_reconnects_and_catches_up_with_what_it_missed(pg_url: str) -> None:
    store, other = await _store(pg_url), await _store(pg_url)
    bus = PgEventBus(store, pg_url, catch_up_interval=60)  # no polling: only the listener can tell
    await bus.start()
    try:
        with bus.subscribe() as sub:
            admin = await asyncpg.connect(asyncpg_dsn(pg_url))
            try:  # the server drops the listener's connection, as a failover would
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
                )
            finally:
                await admin.close()
            missed = await _new_jobs(other, 3)  # committed while nobody listened
            assert await _drain(sub, 3) == sorted(e.seq for e in missed)
            assert bus.reconnects >= 1
            later = await _new_jobs(other, 2)  # and it listens again
            assert await _drain(sub, 2) == sorted(e.seq for e in later)
    finally:
        await bus.close()
        await store.engine.dispose()
        await other.engine.dispose()


async def test_a_revocation_on_one_replica_ends_the_grants_subscriptions_on_another(pg_url: str) -> None:
    store = await _store(pg_url)
    here, there = PgEventBus(store, pg_url), PgEventBus(store, pg_url)
    await here.start()
    await there.start()
    try:
        with there.subscribe(grant_ids=frozenset({"g_1"})) as sub, there.subscribe() as operator:
            await here.revoke_grant("g_1")
            with pytest.raises(Exception, match="access revoked"):
                await sub.get(within=10)
            assert not operator.ended
    finally:
        await here.close()
        await there.close()
        await store.engine.dispose()


def _event(seq: int, grant_id: str) -> JobEvent:
    return JobEvent(
        seq=seq,
        job_id=f"j_{seq}",
        consumer_id="c",
        grant_id=grant_id,
        state=JobState.QUEUED,
        reason=None,
        message=None,
        exit_code=None,
        created_at=utcnow(),
    )


async def test_a_grants_subscribers_are_not_even_asked_about_another_grants_events() -> None:
    bus = EventBus()
    asked: list[str] = []

    def everything(e: JobEvent) -> bool:
        asked.append(e.grant_id)
        return True

    with (
        bus.subscribe(everything, grant_ids=frozenset({"g_1"})) as sub,
        bus.subscribe(everything) as operator,
    ):
        bus.publish(_event(1, "g_2"))
        bus.publish(_event(2, "g_1"))
        assert asked == ["g_2", "g_1", "g_1"]  # the operator's, then both for g_1
        assert [e.seq for e in [await sub.get(within=1)]] == [2]
        assert len(operator) == 2
    assert bus.subscriber_count == 0
    assert not bus._by_grant and not bus._unscoped
