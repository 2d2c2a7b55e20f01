"""The event bus across replicas: PostgreSQL LISTEN/NOTIFY behind the interface of :class:`EventBus`.

Every event transaction sends ``NOTIFY wml_job_events, '<seq>'`` (see ``JobRepository._add_event`` in
``core.store.jobs``); PostgreSQL delivers it only after the commit. One listener connection per replica (an
asyncpg connection owned by the services' lifespan) hears every replica's events. The notification only
tells :class:`OrderedEventBus` which ``seq`` was committed: an event of this replica is usually fanned out
from memory already; otherwise it reads the events after the last ``seq`` it fanned out from the database,
oldest first, so each event reaches this replica's subscribers exactly once and in ``seq`` order, whichever
replica committed it. If the connection drops, the listener reconnects and catches up from the same ``seq``,
so nothing committed meanwhile is lost. Grant revocations travel on a second channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from sqlalchemy.engine import make_url

from core.live.bus import OrderedEventBus
from core.store import EVENTS_CHANNEL, Store
from core.waiting import cancel_and_wait, wait_set

log = structlog.get_logger("wml.events")

REVOCATIONS_CHANNEL = "wml_grant_revocations"
CONNECT_TIMEOUT = 10.0


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """``postgresql+asyncpg://...`` as the plain ``postgresql://...`` DSN asyncpg takes."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgEventBus(OrderedEventBus):
    def __init__(
        self,
        store: Store,
        database_url: str,
        queue_size: int = 1000,
        *,
        reconnect_delay: float = 0.5,
        catch_up_interval: float = 5.0,
    ) -> None:
        super().__init__(store, queue_size, catch_up_interval=catch_up_interval)
        self._dsn = asyncpg_dsn(database_url)
        self._reconnect_delay = reconnect_delay
        self._connected = asyncio.Event()
        self._listener_task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self.reconnects = 0

    async def start(self) -> None:
        await super().start()
        self._listener_task = asyncio.create_task(self._listen_forever(), name="pg-event-listener")
        if not await wait_set(self._connected, CONNECT_TIMEOUT):
            raise TimeoutError(f"the event listener did not connect within {CONNECT_TIMEOUT} s")

    async def close(self) -> None:
        if self._listener_task is not None:
            await cancel_and_wait(self._listener_task)
            self._listener_task = None
        await super().close()

    async def revoke_grant(self, grant_id: str) -> None:
        self._revoke_locally(grant_id)
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute("SELECT pg_notify($1, $2)", REVOCATIONS_CHANNEL, grant_id)
        finally:
            await conn.close()

    async def drop_connection(self) -> None:
        """Close the listener's connection as a network failure would (for tests and operators)."""
        if self._conn is not None:
            await self._conn.close()

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event listener lost its connection; reconnecting", error=str(e))
            self._connected.clear()
            self.reconnects += 1
            await asyncio.sleep(self._reconnect_delay)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        self._conn = conn
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(EVENTS_CHANNEL, self._on_event)
            await conn.add_listener(REVOCATIONS_CHANNEL, self._on_revocation)
            self._connected.set()
            # Listening now: whatever was committed while nobody listened is read by this catch-up.
            self.request_read()
            while not conn.is_closed():
                await wait_set(lost, self._catch_up_interval)
            raise ConnectionError("the listener's connection closed")
        finally:
            self._conn = None
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()

    def _on_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            seq = int(payload)
        except ValueError:
            self.request_read()
            return
        self.announce(seq)  # nothing to read when it was published here and fanned out already

    def _on_revocation(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._revoke_locally(payload)
