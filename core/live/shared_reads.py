"""Reads shared by all of a process's streams, so that subscriber count never exhausts the pool.

:class:`SharedReads` runs concurrent identical reads as one query (single flight) and reuses a recent
result for a while; :class:`GrantWatch` re-checks, every interval, each grant that open streams use
(one read per grant, however many streams) and ends a grant that stopped being usable on the bus, which
ends its streams and marks its websocket connections revoked. A connection pool too busy to answer in
time becomes :class:`DatabaseBusyError` (``UNAVAILABLE``: retry), not an internal error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.auth import grant_is_usable
from core.errors import UnavailableError
from core.live.bus import EventBus
from core.store import Store

T = TypeVar("T")
log = structlog.get_logger("wml.streams")


class DatabaseBusyError(UnavailableError):
    def __init__(self) -> None:
        super().__init__("the database is too busy to serve this stream now; retry (with since)")


class SharedReads:
    """Reads shared by all streams: ``once`` runs concurrent identical reads as one query (single
    flight), ``recent`` also reuses a result for ``max_age`` seconds. A pool timeout becomes
    :class:`DatabaseBusyError`."""

    def __init__(self, max_age: float) -> None:
        self._max_age = max_age
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}
        self._recent: dict[Hashable, tuple[float, Any]] = {}

    async def once(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(busy_is_typed(read()))
            self._flights[key] = flight
            flight.add_done_callback(lambda f: self._landed(key, f))
        # Shielded: a subscriber that leaves does not cancel the read the others wait for.
        return await asyncio.shield(flight)

    def peek(self, key: Hashable) -> tuple[bool, Any]:
        """(True, value) when ``recent`` would answer from its cache now; (False, None) otherwise."""
        seen = self._recent.get(key)
        if seen is not None and asyncio.get_running_loop().time() - seen[0] < self._max_age:
            return True, seen[1]
        return False, None

    async def recent(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        now = asyncio.get_running_loop().time()
        seen = self._recent.get(key)
        if seen is not None and now - seen[0] < self._max_age:
            return seen[1]  # type: ignore[no-any-return]
        value = await self.once(key, read)
        if len(self._recent) > 10_000:  # a bound: drop what is stale anyway
            self._recent = {k: v for k, v in self._recent.items() if now - v[0] < self._max_age}
        self._recent[key] = (now, value)  # stamped with when it was asked for: never too young
        return value

    async def fresh(self, key: Hashable, read: Callable[[], Awaitable[T]]) -> T:
        """Read now (sharing a read in flight) and keep the result for ``recent``."""
        now = asyncio.get_running_loop().time()
        value = await self.once(key, read)
        self._recent[key] = (now, value)
        return value

    def forget(self, key: Hashable) -> None:
        self._recent.pop(key, None)

    def _landed(self, key: Hashable, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved, even when every waiter left


async def busy_is_typed(read: Awaitable[T]) -> T:
    try:
        return await read
    except PoolTimeoutError:
        raise DatabaseBusyError() from None


class GrantWatch:
    """Every ``interval`` seconds, one read of each grant in use by open streams; a grant no longer
    usable (expired, deprovisioned, deleted) is ended on the bus."""

    def __init__(self, store: Store, bus: EventBus, reads: SharedReads, interval: float) -> None:
        self._store = store
        self._bus = bus
        self._reads = reads
        self._interval = interval
        self._users: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def watching(self, grant_ids: Iterable[str]) -> Iterator[None]:
        grant_ids = tuple(grant_ids)
        self._users.update(grant_ids)
        if grant_ids and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="grant-watch")
        try:
            yield
        finally:
            self._users.subtract(grant_ids)
            for grant_id in grant_ids:
                if self._users[grant_id] <= 0:
                    del self._users[grant_id]

    async def _run(self) -> None:
        while self._users:
            await asyncio.sleep(self._interval)
            for grant_id in list(self._users):
                try:
                    grant = await self._reads.fresh(
                        ("grant", grant_id), partial(self._store.grants.get_grant, grant_id)
                    )
                except Exception as e:  # the next round tries again
                    log.warning("grant re-check failed", grant_id=grant_id, error=str(e))
                    continue
                if grant is None or not grant_is_usable(grant):
                    log.info("grant no longer usable; ending its streams", grant_id=grant_id)
                    self._bus.end_grant(grant_id)
