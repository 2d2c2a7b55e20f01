"""Following a job's log from before its worker runs: an INITIALIZING job holds its backend reference
before the backend has the run, so the stream waits for the worker instead of asking the backend about a
run it does not know yet (which would end the stream at once, without a line)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import JobRun, Resources, RunPhase
from backends.workflow.host.local.backend import LocalWorkflowBackend
from core.assets import Asset
from core.auth import Principal
from core.live.bus import EventBus
from core.live.streams import JobStreams
from core.models import Job, new_id
from core.states import JobState
from core.store import Store
from core.store.engine import create_engine, migrate

ASSET = Asset.model_validate({"id": "a", "name": "A", "image": "img"})


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    await migrate(database_url)
    store = Store(create_engine(database_url))
    yield store
    await store.engine.dispose()


async def test_following_the_log_of_a_job_its_backend_has_not_got_yet_waits_for_the_worker(
    store: Store, tmp_path: Path
) -> None:
    bus = EventBus()
    storage = FileStorageBackend(tmp_path / "objects")
    backend = LocalWorkflowBackend(tmp_path / "jobs", storage, poll_interval=0.05, kill_grace=1.0)
    streams = JobStreams(store, bus, backend, storage)
    await store.assets.sync_assets([ASSET])
    consumer = await store.grants.create_consumer("c_alice", "alice")
    grant = await store.grants.create_grant("g_alice", consumer.id, "a", "hash-alice", None)
    principal = Principal(consumer.id, grant_ids=frozenset({grant.id}), asset_ids=frozenset({"a"}))
    job = Job.queued(job_id=new_id("j"), consumer_id=consumer.id, grant_id=grant.id, asset=ASSET)
    await store.jobs.insert_job(job)
    ref = backend.reference(job.id, job.consumer_id)
    await store.jobs.transition(job.id, JobState.INITIALIZING, backend_ref=ref)  # the submit is yet to come

    lines = streams.logs(principal, job.id, follow=True)
    first = asyncio.ensure_future(anext(lines))
    await asyncio.sleep(0.2)  # the stream has looked at the job by now
    assert not first.done()

    await backend.start()
    updates = backend.updates()
    run = JobRun(
        job_id=job.id,
        consumer_id=job.consumer_id,
        asset_id="a",
        image="img",
        command=None,
        args=None,
        env={},
        resources=Resources(),
        inputs=(),
        outputs=(),
        log_key=f"consumers/{job.consumer_id}/files/log-1",
        run_timeout=30,
        local_command=["sh", "-c", "echo hello"],
    )
    try:
        assert await backend.submit(run) == ref
        while (await anext(updates)).phase != RunPhase.RUNNING:
            pass
        moved = await store.jobs.transition(job.id, JobState.RUNNING)
        assert moved is not None
        bus.publish(moved[1])
        assert await asyncio.wait_for(first, 10) == "hello"
        while (await anext(updates)).phase == RunPhase.RUNNING:
            pass
    finally:
        first.cancel()
        await lines.aclose()  # type: ignore[attr-defined]
        await backend.cleanup(ref)
        await backend.close()
