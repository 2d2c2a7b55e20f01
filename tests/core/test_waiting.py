"""core.waiting: a loop that waits with it stops whenever its task is cancelled, even when the cancel comes
in the same loop pass as the wake-up (where Python 3.11's asyncio.wait_for loses the cancel); stopping a
task lets the caller's own cancel through; a shutdown step that hangs is cut short and the rest goes on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog

from backends.storage.file import FileStorageBackend
from backends.workflow.host.local.backend import LocalWorkflowBackend
from core.services import open_services
from core.waiting import cancel_and_wait, wait_set
from tests.support.api import make_settings


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


async def test_cancel_and_wait_ends_the_task_and_lets_a_cancel_of_the_caller_through() -> None:
    async def stubborn() -> None:  # takes a while to stop once cancelled
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(asyncio.sleep(0.5))

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)
    stopper.cancel()  # the caller's own deadline, while the task is still stopping
    done, _ = await asyncio.wait({stopper}, timeout=2)
    assert done == {stopper} and stopper.cancelled()  # not swallowed: the caller stops at once
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled()


async def test_cancel_and_wait_raises_what_the_task_failed_with() -> None:
    async def failing() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("broken on the way out")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broken on the way out"):
        await cancel_and_wait(task)


async def test_a_shutdown_that_hangs_in_one_step_still_closes_the_rest(tmp_path: Path) -> None:
    class HangingBackend(LocalWorkflowBackend):
        async def close(self) -> None:
            await asyncio.Event().wait()

    settings = make_settings(tmp_path)
    storage = FileStorageBackend(tmp_path / "files")
    services = await open_services(settings, storage, HangingBackend(tmp_path / "jobs", storage))
    assert services.bus.position is not None  # the event bus is fanning out

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(services.close(step_seconds=0.2), timeout=5)

    assert [(e["event"], e["step"]) for e in logs if e["log_level"] == "error"] == [
        ("shutdown_step_overran", "supervisor and workflow backend")
    ]
    assert services.bus.position is None  # the steps after it ran all the same
