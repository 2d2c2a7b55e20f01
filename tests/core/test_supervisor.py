"""The supervisor's deadlines and reconciliation, driven by a scripted backend.

The backend here is a fake on purpose: these tests are about what the supervisor does when a backend
hangs in a phase or forgets a job, which a real backend cannot be made to do on demand. The real
backends are exercised through the API tests and the workflow contract suite.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backends.storage.file import FileStorageBackend
from backends.workflow.base import BackendUpdate, JobRun, RunPhase
from core.assets import Asset
from core.live.bus import EventBus
from core.models import FileOrigin, FileRecord, FileStatus, Job, new_id
from core.states import JobState
from core.store import Store
from core.store.engine import create_engine, migrate
from core.supervisor import Supervisor


class ScriptedBackend:
    """Accepts runs and reports only what the test pushes."""

    name = "scripted"

    def __init__(self) -> None:
        self.queue: asyncio.Queue[BackendUpdate] = asyncio.Queue()
        self.submitted: list[JobRun] = []
        self.canceled: list[str] = []
        self.cleaned: list[str] = []
        self.known: dict[str, BackendUpdate] = {}

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def reference(self, job_id: str, consumer_id: str) -> str:
        return f"ref-{job_id}"

    async def submit(self, run: JobRun) -> str:
        self.submitted.append(run)
        return f"ref-{run.job_id}"

    async def cancel(self, ref: str) -> None:
        self.canceled.append(ref)

    async def cleanup(self, ref: str) -> None:
        self.cleaned.append(ref)

    async def updates(self) -> AsyncIterator[BackendUpdate]:
        while True:
            yield await self.queue.get()

    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        return [
            self.known.get(r, BackendUpdate(ref=r, phase=RunPhase.ERROR, reason="BACKEND_LOST")) for r in refs
        ]

    def logs(self, ref: str, *, follow: bool) -> AsyncIterator[str]:
        raise AssertionError("not used")


ASSET = Asset.model_validate(
    {
        "id": "a",
        "name": "A",
        "image": "img",
        "timeouts": {"queue": 60, "start": 1, "run": 60},
        "outputs": [{"name": "result", "path": "result.txt"}],
    }
)


async def _setup(tmp_path: Path, url: str) -> tuple[Store, ScriptedBackend, Supervisor]:
    await migrate(url)
    store = Store(create_engine(url))
    await store.assets.sync_assets([ASSET])
    consumer = await store.grants.create_consumer(new_id("c"), "c")
    await store.grants.create_grant("g_1", consumer.id, "a", "hash", None)
    backend = ScriptedBackend()
    return store, backend, _supervisor(store, backend, tmp_path)


def _supervisor(store: Store, backend: ScriptedBackend, tmp_path: Path, **options: Any) -> Supervisor:
    return Supervisor(
        store,
        backend,
        FileStorageBackend(tmp_path / "files"),
        EventBus(),
        capacity=2,
        max_running_per_consumer=2,
        cancel_timeout=1,
        tick_interval=0.05,
        reconcile_interval=3600,
        **options,
    )


async def _job(store: Store, consumer_id: str, state: JobState = JobState.QUEUED) -> Job:
    queued = Job.queued(job_id=new_id("j"), consumer_id=consumer_id, grant_id="g_1", asset=ASSET)
    job = replace(queued, state=state, deadline_at=queued.created_at + timedelta(seconds=60))
    await store.jobs.insert_job(job)
    return job


async def _wait_state(store: Store, job_id: str, state: JobState, timeout: float = 5) -> Job:
    for _ in range(int(timeout / 0.05)):
        job = await store.jobs.get_job(job_id)
        assert job is not None
        if job.state == state:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job never reached {state}; it is {job.state}")


async def test_a_job_that_never_starts_ends_start_timeout_and_is_cancelled_in_the_backend(
    tmp_path: Path,
    database_url: str,
) -> None:
    store, backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    await supervisor.start()
    try:
        job = await _job(store, consumer)
        supervisor.wake()
        await _wait_state(store, job.id, JobState.INITIALIZING)
        ended = await _wait_state(store, job.id, JobState.SYSTEM_ERROR)
        assert ended.reason == "START_TIMEOUT"
        assert backend.canceled == [f"ref-{job.id}"]
        assert backend.cleaned == [f"ref-{job.id}"]
    finally:
        await supervisor.stop()
        await store.engine.dispose()


async def test_a_cancel_the_backend_never_confirms_is_forced_after_the_cancel_timeout(
    tmp_path: Path, database_url: str
) -> None:
    store, backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    await supervisor.start()
    try:
        job = await _job(store, consumer)
        supervisor.wake()
        await _wait_state(store, job.id, JobState.INITIALIZING)
        await backend.queue.put(BackendUpdate(ref=f"ref-{job.id}", phase=RunPhase.RUNNING))
        running = await _wait_state(store, job.id, JobState.RUNNING)
        stopping = await supervisor.cancel(running, reason="CANCELED_BY_USER", message="stop")
        assert stopping.state == JobState.CANCELING
        ended = await _wait_state(store, job.id, JobState.CANCELED)
        assert ended.reason == "CANCELED_BY_USER"
    finally:
        await supervisor.stop()
        await store.engine.dispose()


async def test_a_cancel_that_races_the_start_cancels_the_job_it_finds(
    tmp_path: Path, database_url: str
) -> None:
    store, backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    seen_queued = await _job(store, consumer)
    # Between the caller's read (QUEUED) and its cancel, the job was started (here or on another replica).
    await store.jobs.transition(seen_queued.id, JobState.INITIALIZING, backend_ref=f"ref-{seen_queued.id}")
    try:
        answer = await supervisor.cancel(seen_queued, reason="CANCELED_BY_USER", message="stop")

        assert answer.state == JobState.CANCELING
        assert backend.canceled == [f"ref-{seen_queued.id}"]
    finally:
        await store.engine.dispose()


async def test_startup_reconcile_marks_forgotten_and_unsubmitted_jobs_backend_lost(
    tmp_path: Path, database_url: str
) -> None:
    store, _backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    forgotten = await _job(store, consumer)
    await store.jobs.transition(forgotten.id, JobState.INITIALIZING)
    await store.jobs.update_job(forgotten.id, backend_ref="ref-gone")
    unsubmitted = await _job(store, consumer)
    await store.jobs.transition(unsubmitted.id, JobState.INITIALIZING)
    await supervisor.start()
    try:
        for job_id in (forgotten.id, unsubmitted.id):
            ended = await _wait_state(store, job_id, JobState.SYSTEM_ERROR)
            assert ended.reason == "BACKEND_LOST"
    finally:
        await supervisor.stop()
        await store.engine.dispose()


async def test_a_periodic_reconcile_leaves_a_job_whose_submit_may_be_under_way_to_its_start_deadline(
    tmp_path: Path, database_url: str
) -> None:
    store, backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    # INITIALIZING with its reference while a submit (here or on another replica) has not reached the
    # backend yet: "not known" is no verdict. A running job the backend does not know is lost.
    starting = await _job(store, consumer)
    await store.jobs.transition(starting.id, JobState.INITIALIZING, backend_ref=f"ref-{starting.id}")
    running = await _job(store, consumer)
    await store.jobs.transition(running.id, JobState.INITIALIZING, backend_ref=f"ref-{running.id}")
    await store.jobs.transition(running.id, JobState.RUNNING)

    await supervisor.reconcile()

    still = await store.jobs.get_job(starting.id)
    assert still is not None and still.state == JobState.INITIALIZING
    lost = await store.jobs.get_job(running.id)
    assert lost is not None and (lost.state, lost.reason) == (JobState.SYSTEM_ERROR, "BACKEND_LOST")
    assert backend.cleaned == [f"ref-{running.id}"]
    await store.engine.dispose()


async def test_an_update_for_an_already_ended_job_changes_nothing(tmp_path: Path, database_url: str) -> None:
    store, backend, supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    job = await _job(store, consumer)
    await supervisor.cancel(job, reason="CANCELED_BY_USER", message="stop")
    await store.jobs.update_job(job.id, backend_ref="ref-late")
    await supervisor.apply(BackendUpdate(ref="ref-late", phase=RunPhase.SUCCEEDED, exit_code=0))
    after = await store.jobs.get_job(job.id)
    assert after is not None and after.state == JobState.CANCELED
    assert [e.state for e in await store.events.events(job.id)] == [JobState.QUEUED, JobState.CANCELED]
    assert backend.cleaned == ["ref-late"]
    await store.engine.dispose()


async def test_concurrent_transitions_record_exactly_one_winner(tmp_path: Path, database_url: str) -> None:
    store, _backend, _supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    job = await _job(store, consumer)
    results = await asyncio.gather(
        store.jobs.transition(job.id, JobState.CANCELED, reason="A"),
        store.jobs.transition(job.id, JobState.SYSTEM_ERROR, reason="B"),
        store.jobs.transition(job.id, JobState.INITIALIZING),
    )
    winners = [r for r in results if r is not None]
    assert len(winners) >= 1
    events = await store.events.events(job.id)
    final = await store.jobs.get_job(job.id)
    assert final is not None
    # Each recorded event is a legal step from the one before, and the last one is the job's state.
    assert events[-1].state == final.state
    assert len(events) == 1 + len(winners)
    await store.engine.dispose()


async def test_an_event_seq_is_never_reused_after_the_newest_job_is_deleted(
    tmp_path: Path, database_url: str
) -> None:
    store, _backend, _supervisor = await _setup(tmp_path, database_url)
    consumer = (await store.grants.list_grants())[0].consumer_id
    await _job(store, consumer)
    newest = await _job(store, consumer)
    seen = (await store.events.events(newest.id))[-1].seq
    await store.jobs.delete_job(newest.id)
    later = await _job(store, consumer)
    assert (await store.events.events(later.id))[0].seq > seen
    await store.engine.dispose()


class InterruptedSubmitBackend(ScriptedBackend):
    """Starts the run (it is known to the backend at once), then hangs before answering: what a restart
    of the service in the middle of a submit looks like to the backend."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.row_while_submitting: Job | None = None
        self.store: Store | None = None

    async def submit(self, run: JobRun) -> str:
        ref = self.reference(run.job_id, run.consumer_id)
        self.known[ref] = BackendUpdate(ref=ref, phase=RunPhase.RUNNING)
        assert self.store is not None
        self.row_while_submitting = await self.store.jobs.get_job(run.job_id)
        self.started.set()
        await asyncio.Event().wait()  # the answer never comes: the service stops first
        raise AssertionError("unreachable")


async def test_a_job_interrupted_mid_submit_is_adopted_by_the_next_start_not_lost(
    tmp_path: Path, database_url: str
) -> None:
    """The reference is stored with INITIALIZING, before submit: after a restart the job is reconciled
    with what the backend started (RUNNING), where it used to be reported BACKEND_LOST."""
    store, _, _ = await _setup(tmp_path, database_url)
    backend = InterruptedSubmitBackend()
    backend.store = store
    supervisor = _supervisor(store, backend, tmp_path)
    consumer = (await store.grants.list_grants())[0].consumer_id
    job = await _job(store, consumer)
    await supervisor.start()
    try:
        supervisor.wake()
        await asyncio.wait_for(backend.started.wait(), 5)
        assert backend.row_while_submitting is not None
        assert backend.row_while_submitting.state == JobState.INITIALIZING
        assert backend.row_while_submitting.backend_ref == f"ref-{job.id}"
    finally:
        await supervisor.stop()  # the submit is cut off, as by a restart
    restarted = _supervisor(store, backend, tmp_path)
    await restarted.start()
    try:
        adopted = await _wait_state(store, job.id, JobState.RUNNING)
        assert adopted.backend_ref == f"ref-{job.id}"
    finally:
        await restarted.stop()
        await store.engine.dispose()


async def test_finished_jobs_past_the_retention_period_are_deleted_with_their_files_and_events(
    tmp_path: Path, database_url: str
) -> None:
    store, backend, _ = await _setup(tmp_path, database_url)
    storage = FileStorageBackend(tmp_path / "files")
    supervisor = _supervisor(store, backend, tmp_path, retention=timedelta(days=30))
    consumer = (await store.grants.list_grants())[0].consumer_id
    old, recent, live = [await _job(store, consumer) for _ in range(3)]
    for job in (old, recent):
        await store.jobs.transition(job.id, JobState.CANCELED, reason="CANCELED_BY_USER")
    now = datetime.now(UTC)
    await store.jobs.update_job(old.id, finished_at=now - timedelta(days=31))
    await store.jobs.update_job(recent.id, finished_at=now - timedelta(days=29))
    await store.jobs.update_job(live.id, created_at=now - timedelta(days=40))  # queued long: not finished

    async def chunks() -> AsyncIterator[bytes]:
        yield b"result"

    key = f"consumers/{consumer}/files/f_old_log"
    await storage.put(key, chunks())
    await store.files.insert_file(
        FileRecord(
            id="f_old_log",
            consumer_id=consumer,
            grant_id="g_1",
            job_id=old.id,
            name="log.txt",
            size=6,
            sha256=None,
            content_type="text/plain",
            origin=FileOrigin.JOB_LOG,
            status=FileStatus.READY,
            storage_key=key,
            created_at=now - timedelta(days=31),
            expires_at=None,
        )
    )
    try:
        assert await supervisor.prune_finished() == 1

        assert await store.jobs.get_job(old.id) is None
        assert await store.events.events(old.id) == []
        assert await store.files.get_file("f_old_log") is None
        assert not (tmp_path / "files" / key).exists()
        for kept in (recent, live):
            assert await store.jobs.get_job(kept.id) is not None
        assert await supervisor.prune_finished() == 0
    finally:
        await store.engine.dispose()
