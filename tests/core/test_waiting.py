"""core.waiting: a loop that waits with it stops whenever its task is cancelled, even when the cancel comes
in the same loop pass as the wake-up (where Python 3.11's asyncio.wait_for loses the cancel)."""

from __future__ import annotations

import asyncio

from core.waiting import wait_set


async def test_it_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_set(event, 5) is True


async def test_a_loop_cancelled_as_it_is_woken_always_stops() -> None:
    wake = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait_set(wake, 0.5)
            wake.clear()
            rounds += 1

    for attempt in range(100):
        task = asyncio.create_task(loop())
        for _ in range(attempt % 4):  # at various points of the loop
            await asyncio.sleep(0)
        wake.set()
        task.cancel()  # the same loop pass as the wake-up
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done == {task}, f"attempt {attempt}: the loop went on after its cancel ({rounds} rounds)"
        assert task.cancelled()
