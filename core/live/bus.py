"""The event bus: committed JobEvents fanned out to the subscribers of this process.

Publishing never blocks and memory stays bounded: every subscriber has a queue of at most
``queue_size`` events, and one that falls behind is ended with :class:`SubscriberTooSlow` and dropped
(it resumes from its last ``seq`` by replaying from the store). A subscriber may also set a ``direct``
callback: while its task waits on an empty queue, an event is handed to that callback during the fan-out
itself (which can deliver it at once, e.g. write it to a socket) instead of waking the task; when the
callback declines (returns False), the event is queued as usual. Revoking a grant ends every open
subscription of that grant with :class:`AccessRevoked` and tells the registered revocation callbacks
(open websocket connections), so a deprovisioned token stops seeing anything at once.

A subscription scoped to grants (``grant_ids``) is offered only events of those grants: the bus keeps
its subscribers by grant, so an event costs nothing for the subscribers of other grants, and the work a
stream does once per grant (is it still usable?) is asked once per event and grant, not per subscriber.

:class:`OrderedEventBus` is the bus of one replica (SQLite): subscribers see every event once and in
``seq`` (= commit) order even when the coroutines that committed them publish in another order. An
event published here whose ``seq`` directly follows the last one fanned out is fanned out from memory
(so are those published early and waiting for it); a gap (an event committed elsewhere, or not yet
published) is filled by reading the events after the last ``seq`` from the store.
``core.live.postgres`` adds PostgreSQL LISTEN/NOTIFY to it, so events and revocations cross replicas.
:class:`EventBus` alone fans out whatever it is handed (for tests of components that need a bus).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import structlog

from core.models import JobEvent
from core.store import Store
from core.waiting import cancel_and_wait, wait_set

CATCH_UP_BATCH = 500
log = structlog.get_logger("wml.events")


class SubscriptionEnded(Exception):
    """The bus ended a subscription; the subscriber can tell why from the subclass."""


class SubscriberTooSlow(SubscriptionEnded):
    def __init__(self) -> None:
        super().__init__("subscriber too slow: its queue overflowed")


class AccessRevoked(SubscriptionEnded):
    def __init__(self) -> None:
        super().__init__("access revoked: the token's grant ended")


class Subscription:
    """One subscriber's bounded queue. Use as a context manager so it is always removed."""

    def __init__(
        self,
        bus: EventBus,
        predicate: Callable[[JobEvent], bool],
        maxsize: int,
        grant_ids: frozenset[str] | None,
    ) -> None:
        self._bus = bus
        self.predicate = predicate
        self.maxsize = maxsize
        self.grant_ids = grant_ids  # None: the operator, whom no revocation concerns
        # None while empty: an idle subscriber holds no deque (its first block alone is ~0.6 KiB).
        self._items: deque[JobEvent] | None = None
        # What ``get`` waits on (True: something to read, False: timed out); a bare future and timer
        # cost far less than an Event and ``wait_for`` (a task per wait) across thousands of subscribers.
        self._waiter: asyncio.Future[bool] | None = None
        self.ended: SubscriptionEnded | None = None
        # Delivers an event during the fan-out (True) or declines it (False: queue it).
        self.direct: Callable[[JobEvent], bool] | None = None

    @property
    def overflowed(self) -> bool:
        return isinstance(self.ended, SubscriberTooSlow)

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def offer(self, event: JobEvent) -> bool:
        """Queue an event without blocking; False when the queue is full."""
        if self.ended is not None:
            return True
        items = self._items
        if items is None:
            items = self._items = deque()
        if len(items) >= self.maxsize:
            return False
        items.append(event)
        self._bus._note_depth(len(items))
        self._wake(True)
        return True

    def deliver_now(self, event: JobEvent) -> bool:
        """Hand ``event`` to ``direct`` when the subscriber waits with nothing queued (so nothing it
        was given earlier is still on its way); False when it must be queued instead."""
        direct = self.direct
        waiter = self._waiter
        if direct is None or waiter is None or waiter.done() or self.ended is not None:
            return False
        try:
            return direct(event)
        except Exception:
            log.exception("direct delivery failed; queueing the event")
            self.direct = None
            return False

    def _wake(self, ready: bool) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(ready)

    def end(self, reason: SubscriptionEnded) -> None:
        """Stop the subscription: queued events are dropped and the next ``get`` raises ``reason``."""
        if self.ended is None:
            self.ended = reason
        self._items = None
        self._wake(True)
        self.close()

    async def get(self, within: float | None = None) -> JobEvent | None:
        """The next event; None when ``within`` seconds pass first. Raises why the bus ended it."""
        while True:
            if self.ended is not None:
                raise self.ended
            items = self._items
            if items:
                event = items.popleft()
                if not items:
                    self._items = None
                return event
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(within, self._wake, False) if within is not None else None
            try:
                if not await waiter:
                    return None
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()

    def close(self) -> None:
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """In-process fan-out. ``publish`` is called right after the event's transaction committed."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[Subscription] = set()
        self._unscoped: set[Subscription] = set()  # grant_ids None (the operator): offered every event
        self._by_grant: dict[str, set[Subscription]] = {}  # the others, under each of their grants
        self._revocation_callbacks: dict[int, tuple[frozenset[str], Callable[[], None]]] = {}
        self._revocation_listeners: list[Callable[[str], None]] = []
        self._next_callback = 0
        self.queue_size = queue_size
        self.max_depth = 0  # the deepest any subscriber queue has been (never above queue_size)
        self.dropped = 0  # subscribers ended because they fell behind

    async def start(self) -> None:
        """Nothing to start in-process; the PostgreSQL bus opens its listener here."""

    async def close(self) -> None:
        for sub in list(self._subscribers):
            sub.close()

    def subscribe(
        self,
        predicate: Callable[[JobEvent], bool] = lambda _e: True,
        *,
        grant_ids: frozenset[str] | None = None,
    ) -> Subscription:
        """A subscription to the events ``predicate`` accepts; with ``grant_ids``, only events of those
        grants are offered to it (and a revocation of one of them ends it)."""
        sub = Subscription(self, predicate, self.queue_size, grant_ids)
        self._subscribers.add(sub)
        if grant_ids is None:
            self._unscoped.add(sub)
        for grant_id in grant_ids or ():
            self._by_grant.setdefault(grant_id, set()).add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        self._unscoped.discard(sub)
        for grant_id in sub.grant_ids or ():
            scoped = self._by_grant.get(grant_id)
            if scoped is not None:
                scoped.discard(sub)
                if not scoped:
                    del self._by_grant[grant_id]

    def publish(self, event: JobEvent) -> None:
        self._fan_out(event)

    def _fan_out(self, event: JobEvent) -> None:
        scoped = self._by_grant.get(event.grant_id)
        targets = [*self._unscoped, *scoped] if scoped else list(self._unscoped)
        for sub in targets:
            if sub.predicate(event) and not sub.deliver_now(event) and not sub.offer(event):
                self.dropped += 1
                sub.end(SubscriberTooSlow())

    def _note_depth(self, depth: int) -> None:
        self.max_depth = max(self.max_depth, depth)

    async def revoke_grant(self, grant_id: str) -> None:
        """End every open subscription of ``grant_id`` (call it when a grant stops being ACTIVE)."""
        self._revoke_locally(grant_id)

    def end_grant(self, grant_id: str) -> None:
        """End ``grant_id``'s subscriptions in this process only (each replica notices for itself that
        a grant expired)."""
        self._revoke_locally(grant_id)

    @property
    def position(self) -> int | None:
        """The ``seq`` up to which events were fanned out, when every later one will be (in ``seq``
        order); None when this bus cannot tell (it fans out whatever it is handed)."""
        return None

    def on_any_revocation(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(grant_id)`` on every revocation, before the subscriptions are ended."""
        self._revocation_listeners.append(listener)

    def _revoke_locally(self, grant_id: str) -> None:
        for listener in self._revocation_listeners:
            with contextlib.suppress(Exception):
                listener(grant_id)
        for sub in list(self._by_grant.get(grant_id, ())):
            sub.end(AccessRevoked())
        for grant_ids, callback in list(self._revocation_callbacks.values()):
            if grant_id in grant_ids:
                with contextlib.suppress(Exception):
                    callback()

    def on_revocation(self, grant_ids: frozenset[str], callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when one of ``grant_ids`` is revoked; returns the function that unregisters."""
        key = self._next_callback
        self._next_callback += 1
        self._revocation_callbacks[key] = (grant_ids, callback)
        return lambda: self._revocation_callbacks.pop(key, None) and None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def queued(self) -> int:
        """Events waiting in all subscriber queues together."""
        return sum(len(sub) for sub in self._subscribers)


class OrderedEventBus(EventBus):
    """Fans out the store's events in ``seq`` order: from memory while the published events follow each
    other, from the store when there is a gap or no event to go by."""

    def __init__(self, store: Store, queue_size: int = 1000, *, catch_up_interval: float = 5.0) -> None:
        super().__init__(queue_size)
        self._store = store
        self._catch_up_interval = catch_up_interval  # a safety net should a wake-up be missed
        self._wake = asyncio.Event()
        self._fan_out_task: asyncio.Task[None] | None = None
        self._pending: dict[int, JobEvent] = {}  # published ahead of a gap, by seq
        self._known_seq = 0  # the highest seq known to be committed (published or announced)
        # Read the store whatever is known (a reconnect, the safety net). Not at start: start() reads the
        # position, and what is committed after it is published here or announced (PgEventBus reads once
        # it listens).
        self._must_read = False
        self.last_seq = 0
        self.store_reads = 0  # reads of new events from the store (the gaps filled)

    async def start(self) -> None:
        self.last_seq = await self._store.events.last_event_seq()
        self._fan_out_task = asyncio.create_task(self._fan_out_forever(), name="event-fan-out")

    async def close(self) -> None:
        if self._fan_out_task is not None:
            await cancel_and_wait(self._fan_out_task)
            self._fan_out_task = None
        await super().close()

    @property
    def position(self) -> int | None:
        return self.last_seq if self._fan_out_task is not None else None

    def publish(self, event: JobEvent | None) -> None:
        """Fan ``event`` out now if it follows the last one fanned out; otherwise keep it for when the
        gap is filled, and wake the reader. Anything but an event is a plain wake-up: read the store."""
        if not isinstance(event, JobEvent) or self._fan_out_task is None:
            self.request_read()
            return
        seq = event.seq
        if seq <= self.last_seq:
            return  # already fanned out (read from the store first)
        if len(self._pending) < CATCH_UP_BATCH:  # beyond that, the store fills the gap
            self._pending[seq] = event
        self._fan_out_pending()
        self.announce(seq)

    def announce(self, seq: int) -> None:
        """``seq`` is committed (a replica's notification): read it unless it was fanned out."""
        self._known_seq = max(self._known_seq, seq)
        if seq > self.last_seq:
            self._wake.set()

    def request_read(self) -> None:
        """Read the store for new events whatever is known (e.g. after a missed notification)."""
        self._must_read = True
        self._wake.set()

    def _fan_out_pending(self) -> None:
        pending = self._pending
        while pending:
            event = pending.pop(self.last_seq + 1, None)
            if event is None:
                return
            self.last_seq = event.seq
            self._fan_out(event)

    async def _fan_out_forever(self) -> None:
        while True:
            # Cleared before reading, so a wake-up that arrives during the read is not lost.
            self._wake.clear()
            if self._must_read or self._known_seq > self.last_seq:
                self._must_read = False
                try:
                    await self._catch_up()
                except Exception:
                    log.exception("reading new events failed; retrying")
                    self._must_read = True
            if not await wait_set(self._wake, self._catch_up_interval):
                self._must_read = True

    async def _catch_up(self) -> None:
        while True:
            self.store_reads += 1
            events = await self._store.events.events_after(self.last_seq, limit=CATCH_UP_BATCH)
            for event in events:
                if event.seq > self.last_seq:  # not fanned out from memory during the read
                    self.last_seq = event.seq
                    self._fan_out(event)
            if len(events) < CATCH_UP_BATCH:
                break
        if self._pending:
            self._pending = {seq: e for seq, e in self._pending.items() if seq > self.last_seq}
            self._fan_out_pending()
