"""``wml demo``: the whole consumer flow on a throw-away embedded server, printing every step.

Starts the embedded default (SQLite, local disk, local processes) on a free loopback port, creates a
consumer with a grant for the dummy job, uploads an input, runs the job, waits for it to end, and
downloads and prints the result. Exits non-zero if any step fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

from core.grants import create_consumer_with_grants
from core.services import open_store
from core.settings import Settings
from wml.client import ApiError, Client
from wml.logs import configure_logging
from wml.server import embedded_server

DEMO_ASSET = "dummy-job"
TERMINAL = {"COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELED"}


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


async def run_demo(settings: Settings, *, data_dir: Path | None, sleep: int, verbose: bool = False) -> int:
    if not verbose:
        configure_logging("WARNING", settings.log_format)  # the steps are the demo's output
    with tempfile.TemporaryDirectory(prefix="wml-demo-") as tmp:
        root = data_dir or Path(tmp)
        demo_settings = settings.model_copy(
            update={
                "data_dir": root,
                "host": "127.0.0.1",
                "port": 0,
                "public_url": None,
                "database_url": None,
                "storage": None,
                "workflow": "local://",
                "tick_interval": 0.2,
            }
        )
        try:
            return await _demo(demo_settings, root, sleep)
        except (ApiError, OSError, TimeoutError) as e:
            print(f"demo failed: {e}", flush=True)
            return 1


async def _demo(settings: Settings, root: Path, sleep: int) -> int:
    step(f"data directory {root} (SQLite, local disk, local processes)")
    store = await open_store(settings)
    try:
        issued = (await create_consumer_with_grants(store, "demo consumer", [DEMO_ASSET]))[0]
    finally:
        await store.engine.dispose()
    step(f"created consumer {issued.consumer.id} with a grant for asset {DEMO_ASSET!r}")

    async with embedded_server(settings) as server:
        step(f"server listening at {server.url}/graphql")
        async with Client(server.url, issued.token) as client:
            me = await client.query("{ me { id name } assets { id name } }")
            step(f"authenticated as {me['me']['name']!r}; granted assets: {[a['id'] for a in me['assets']]}")

            source = root / "demo-input.txt"
            source.write_text("hello from the workflow middle-layer demo\nsecond line\n", encoding="utf-8")
            uploaded = await client.upload(source)
            step(
                f"uploaded {uploaded['name']} ({uploaded['size']} bytes, sha256 {uploaded['sha256'][:12]}...)"
            )

            job = await client.create_job(DEMO_ASSET, {"data": uploaded["id"]}, {"SLEEPTIME": sleep})
            step(f"created job {job['id']} ({job['state']})")
            final = await _wait(client, job["id"], limit=sleep + 120)

            if final["logTail"]:
                step("worker log (tail):")
                for line in final["logTail"].splitlines():
                    print(f"    | {line}")
            if final["state"] != "COMPLETE":
                step(f"job ended {final['state']} ({final['reason']}): {final['message']}")
                return 1
            result = next(o for o in final["outputs"] if o["name"] == "result.txt")
            content = await client.download(result["downloadUrl"])
            if hashlib.sha256(content).hexdigest() != result["sha256"]:
                step("downloaded result does not match its sha256")
                return 1
            step(f"downloaded {result['name']} ({len(content)} bytes, sha256 verified):")
            for line in content.decode(errors="replace").splitlines():
                print(f"    {line}")
    step("demo finished: the job is COMPLETE and its result downloaded")
    return 0


async def _wait(client: Client, job_id: str, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        job = await client.job(job_id)
        if job is None:
            raise ApiError(f"job {job_id} disappeared")
        if job["state"] != last:
            last = job["state"]
            step(f"job is {last}" + (f" ({job['reason']})" if job["reason"] else ""))
        if job["state"] in TERMINAL:
            return job
        await asyncio.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not finish within {limit:.0f}s")
