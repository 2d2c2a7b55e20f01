"""The fan-out loop alone: one event through the bus to N direct-delivery streams, no sockets.

In one process, without a server: an :class:`~core.live.bus.EventBus` with N ``jobEvents``-style streams
of one grant (and, unless ``--one-grant``, N more of another grant, whose subscribers the event is not
for), each waiting with nothing queued and holding the direct-delivery callback
(``JobStreams._deliver_now``) with a ``deliver`` that writes nothing. It times ``publish`` of one event,
``--events`` times, and prints the median and the smallest: the bus's and the streams' own cost per
event, the part of the fan-out that is not the socket writes (``bench/fanout.py`` measures everything).

Run it from another revision's exported tree to compare (``git archive REV core | tar -x -C DIR``, then
``PYTHONPATH=DIR .venv/bin/python bench/fanout_loop.py`` from ``DIR``).

Usage: ``.venv/bin/python bench/fanout_loop.py [--subscribers 10000] [--one-grant] [--events 30]``.
Prints only; writes no result file.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta
from functools import partial
from typing import Any

from core.auth import Principal
from core.live.bus import EventBus
from core.live.streams import JobStreams, _Cursor
from core.models import Grant, GrantState, JobEvent, utcnow
from core.states import JobState


async def measure(subscribers: int, grants: tuple[str, ...], events: int) -> list[float]:
    bus = EventBus()
    nothing: Any = None
    streams = JobStreams(nothing, bus, nothing, nothing, recheck_interval=1e9)
    loop = asyncio.get_running_loop()
    for grant_id in grants:  # known usable, as a stream's first check leaves it
        grant = Grant(
            id=grant_id,
            consumer_id="c",
            asset_id="a",
            state=GrantState.ACTIVE,
            created_at=utcnow(),
            expires_at=utcnow() + timedelta(hours=1),
        )
        streams._reads._recent[("grant", grant_id)] = (loop.time(), grant)
    for grant_id in grants:
        principal = Principal(consumer_id="c", grant_ids=frozenset({grant_id}), asset_ids=frozenset({"a"}))
        for _ in range(subscribers):
            sub = bus.subscribe(lambda e, p=principal: p.may_see(e.grant_id), grant_ids=principal.grant_ids)
            sub._waiter = loop.create_future()  # waiting with nothing queued
            sub.direct = partial(streams._deliver_now, principal, None, _Cursor(0), lambda _e: True)
    seconds = []
    for seq in range(1, events + 1):
        event = JobEvent(
            seq=seq,
            job_id="j",
            consumer_id="c",
            grant_id=grants[0],
            state=JobState.QUEUED,
            reason=None,
            message=None,
            exit_code=None,
            created_at=utcnow(),
        )
        started = time.perf_counter()
        bus.publish(event)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000, help="streams per grant")
    parser.add_argument("--one-grant", action="store_true", help="no streams of another grant")
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    grants = ("g1",) if args.one_grant else ("g1", "g2")
    seconds = asyncio.run(measure(args.subscribers, grants, args.events))
    print(
        f"{args.subscribers} streams x {len(grants)} grant(s): publish median"
        f" {statistics.median(seconds) * 1000:.2f} ms, min {min(seconds) * 1000:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
