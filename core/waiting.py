"""Waiting with a timeout in code whose task may be cancelled: use this, never ``asyncio.wait_for``.

On Python 3.11, ``asyncio.wait_for`` returns normally when a cancel arrives in the same loop pass in which
the awaited thing completes: the cancel is lost. A ``while True`` loop (the supervisor's, the event bus's
fan-out, the callback sender) then goes round again, and the ``stop()`` or ``close()`` that cancelled it
and awaits it waits forever: the service never shuts down. ``asyncio.timeout`` counts cancels and loses
none. ruff bans ``asyncio.wait_for`` in the service's code (pyproject.toml, TID251).
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
