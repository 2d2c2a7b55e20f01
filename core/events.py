"""The event bus: committed JobEvents fanned out to in-process subscribers.

Publishing never blocks: every subscriber has a bounded queue, and one that falls behind is marked
overflowed and dropped (it can resume from its last ``seq``). A PostgreSQL LISTEN/NOTIFY bus that
carries events between replicas plugs in behind the same interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from core.models import JobEvent


class Subscription:
    def __init__(self, bus: EventBus, predicate: Callable[[JobEvent], bool], maxsize: int) -> None:
        self._bus = bus
        self.predicate = predicate
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=maxsize)
        self.overflowed = False

    async def get(self) -> JobEvent:
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[Subscription] = set()
        self._queue_size = queue_size

    def subscribe(self, predicate: Callable[[JobEvent], bool] = lambda _e: True) -> Subscription:
        sub = Subscription(self, predicate, self._queue_size)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: JobEvent) -> None:
        for sub in list(self._subscribers):
            if not sub.predicate(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True
                sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
