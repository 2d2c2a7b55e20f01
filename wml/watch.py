"""Following a job from the command line through the subscriptions (no polling): ``wml watch`` and the
demo print each state change and each log line as it happens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from wml.client.api import ApiError, Client

EVENTS = "subscription($id: ID) { jobEvents(jobId: $id) { seq state reason message exitCode createdAt } }"
LOGS = "subscription($id: ID!) { jobLogs(jobId: $id, follow: true) { seq text } }"
LOG_DRAIN = 10.0  # seconds the log stream may still take once the job has ended


def describe(event: dict[str, Any]) -> str:
    text = f"job is {event['state']}"
    if event.get("reason"):
        text += f" ({event['reason']})"
    if event.get("exitCode") is not None:
        text += f", exit code {event['exitCode']}"
    return text


async def follow_job(
    client: Client,
    job_id: str,
    on_event: Callable[[dict[str, Any]], None],
    on_line: Callable[[str], None],
) -> dict[str, Any]:
    """Print-as-you-go: call ``on_event`` for each state change and ``on_line`` for each log line, until
    the job ended; returns its terminal event."""

    async def lines() -> None:
        async for data in client.subscribe(LOGS, {"id": job_id}):
            on_line(data["jobLogs"]["text"])

    log_task = asyncio.create_task(lines())
    last: dict[str, Any] | None = None
    try:
        async for data in client.subscribe(EVENTS, {"id": job_id}):
            last = data["jobEvents"]
            on_event(last)
        if last is None:
            raise ApiError(f"job {job_id} sent no events")
        await asyncio.wait({log_task}, timeout=LOG_DRAIN)  # the last lines, without cancelling it
        if log_task.done() and not log_task.cancelled() and log_task.exception() is not None:
            raise ApiError(f"the job's log could not be followed: {log_task.exception()}")
        return last
    finally:
        log_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ApiError):
            await log_task


async def watch(url: str, token: str, job_id: str) -> int:
    """``wml watch``: 0 when the job ends COMPLETE, 1 otherwise."""
    async with Client(url, token) as client:
        final = await follow_job(
            client,
            job_id,
            lambda e: print(f"{e['createdAt']}  {describe(e)}", flush=True),
            lambda line: print(f"    | {line}", flush=True),
        )
    if final.get("message") and final["state"] != "COMPLETE":
        print(f"    {final['message']}", flush=True)
    return 0 if final["state"] == "COMPLETE" else 1
