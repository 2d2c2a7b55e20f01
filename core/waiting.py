"""Waiting in code whose task may be cancelled, and stopping such tasks: use these, not ``asyncio.wait_for``
nor ``with suppress(CancelledError): await task``.

- On Python 3.11, ``asyncio.wait_for`` returns normally when a cancel arrives in the same loop pass in
  which the awaited thing completes: the cancel is lost. A ``while True`` loop (the supervisor's, the event
  bus's fan-out, the callback sender) then goes round again, and the ``stop()`` that cancelled it and awaits
  it waits forever. ``asyncio.timeout`` counts cancels and loses none. ruff bans ``asyncio.wait_for`` in the
  service's code (pyproject.toml, TID251).
- ``with suppress(CancelledError): await task`` after ``task.cancel()`` also swallows a cancel of the
  *caller*, such as a shutdown step's deadline: :func:`cancel_and_wait` lets that one through.
- :func:`bounded` runs one shutdown step for at most a few seconds, so one component that hangs is logged
  and left behind instead of keeping the process from exiting (the next start reconciles).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("wml.shutdown")

SHUTDOWN_STEP_SECONDS = 5.0  # each step of a shutdown; a few steps fit Kubernetes' default 30 s grace


async def wait_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; whether it was set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended; an exception it ended with is raised here."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.result()


async def bounded(
    step: str, stop: Callable[[], Awaitable[object]], seconds: float = SHUTDOWN_STEP_SECONDS
) -> bool:
    """Run shutdown ``step`` for at most ``seconds``; whether it finished (overruns are cancelled, logged)."""
    try:
        async with asyncio.timeout(seconds):
            await stop()
    except TimeoutError:
        log.error(
            "shutdown_step_overran", step=step, seconds=seconds, hint="left behind; the next start reconciles"
        )
        return False
    return True
