"""The supervisor owns the life of every job, from QUEUED until it is terminal and cleaned up.

It starts queued jobs when the backend and the consumer's quota have room, applies the backend's
updates to the state machine, records outputs from the side-car's manifest, enforces a deadline on every
non-terminal state, and reconciles live jobs with the backend at start-up and periodically, so no job is
ever stuck. How backend phases map onto job states, and what an update writes to a job, is in
:mod:`core.backend_mapping`.

Several replicas (processes on one PostgreSQL database) act as one service. Each has an id and a lease it
renews (:mod:`core.store.replicas`). A job belongs to the replica that started it (``job.owner``): only
the owner submits, follows, cancels in the backend and cleans it up; scheduling runs under a service-wide
lock, so quotas and capacity hold for all replicas together and no job is started twice. When a replica
stops renewing its lease, its jobs are taken over by another replica at once on a shared backend
(Kubernetes); on a host-bound backend (local, container) they wait a grace period for it to come back
(its id is stable across restarts) and then end SYSTEM_ERROR/BACKEND_LOST, once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog

from backends.storage.base import StorageBackend
from backends.workflow.base import BackendUpdate, RunPhase, WorkflowBackend
from core.backend_mapping import PHASE_TO_STATE, build_run, change_for
from core.live.bus import EventBus
from core.metrics import Metrics
from core.models import Job, JobEvent, utcnow
from core.states import JobState, Reason
from core.store import Change, Store
from core.waiting import cancel_and_wait, wait_set

log = structlog.get_logger("wml.supervisor")

LIVE_BACKEND_STATES = (JobState.INITIALIZING, JobState.RUNNING, JobState.CANCELING)


class Supervisor:
    def __init__(
        self,
        store: Store,
        backend: WorkflowBackend,
        storage: StorageBackend,
        bus: EventBus,
        *,
        capacity: int,
        max_running_per_consumer: int,
        cancel_timeout: int,
        tick_interval: float,
        reconcile_interval: float,
        sweep: Callable[[], Awaitable[int]] | None = None,
        retention: timedelta | None = None,
        replica: str = "single",
        lease: float = 30.0,
        grace: float = 120.0,
        metrics: Metrics | None = None,
    ) -> None:
        """``retention``: how long a finished job is kept after it ended (None: until deleted).
        ``replica``: this process's id; ``lease``: seconds its heartbeat is valid (renewed every third);
        ``grace``: seconds a dead replica's host-bound jobs wait for it to come back."""
        self._metrics = metrics or Metrics()
        self._store = store
        self._backend = backend
        self._storage = storage
        self._bus = bus
        self._capacity = capacity
        self._per_consumer = max_running_per_consumer
        self._cancel_timeout = cancel_timeout
        self._tick = tick_interval
        self._reconcile_every = reconcile_interval
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._schedule_lock = asyncio.Lock()
        self._sweep = sweep  # periodic housekeeping run with reconciliation (expired uploads)
        self._retention = retention
        self._replica = replica
        self._lease = lease
        self._grace = grace
        self._shared = bool(getattr(backend, "shared", False))
        self._cancels_sent: set[str] = set()  # own CANCELING jobs whose backend cancel was asked here

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._store.replicas.heartbeat(self._replica, utcnow())
        await self._backend.start()
        await self.reconcile(startup=True)
        self._tasks = [
            asyncio.create_task(self._consume_updates(), name="supervisor-updates"),
            asyncio.create_task(self._run_loop(), name="supervisor-loop"),
        ]
        self.wake()

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        await self._backend.close()

    def wake(self) -> None:
        self._wake.set()

    async def _run_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + self._reconcile_every
        next_deadlines = loop.time()
        next_beat = loop.time() + self._lease / 3
        while True:
            await wait_set(self._wake, self._tick)
            self._wake.clear()
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + self._lease / 3
                    await self._store.replicas.heartbeat(self._replica, utcnow())
                # Deadlines are looked at once a tick, not on every wake-up (a new job, a freed slot).
                if loop.time() >= next_deadlines:
                    next_deadlines = loop.time() + self._tick
                    await self.enforce_deadlines()
                    await self._follow_cancels()
                await self.schedule()
                if loop.time() >= next_reconcile:
                    next_reconcile = loop.time() + self._reconcile_every
                    await self.handle_dead_replicas()
                    await self.reconcile()
                    await self._housekeeping()
            except Exception:
                log.exception("supervisor pass failed; retrying on the next tick")

    async def _consume_updates(self) -> None:
        async for update in self._backend.updates():
            try:
                await self.apply(update)
            except Exception:
                log.exception("applying a backend update failed", ref=update.ref, phase=update.phase)

    # -- transitions -----------------------------------------------------------------------------------

    async def _transition(self, job_id: str, target: JobState, **kw: Any) -> Job | None:
        result = await self._store.jobs.transition(job_id, target, **kw)
        if result is None:
            return None
        self._announce(*result)
        return result[0]

    def _announce(self, job: Job, event: JobEvent) -> None:
        """Tell everyone of a transition that was committed."""
        self._publish(event)
        log.info("job state", job_id=job.id, consumer_id=job.consumer_id, state=job.state, reason=job.reason)
        self._observe(job)
        if job.state.terminal:
            self.wake()  # capacity freed

    def _observe(self, job: Job) -> None:
        m = self._metrics
        m.job_transitions.labels(job.state.value, job.reason or "").inc()
        if job.state == JobState.RUNNING and job.started_at is not None:
            m.queue_wait.observe((job.started_at - job.created_at).total_seconds())
        if job.state.terminal and job.finished_at is not None:
            began = job.started_at or job.created_at
            m.job_duration.labels(job.state.value).observe((job.finished_at - began).total_seconds())

    def _publish(self, event: JobEvent) -> None:
        self._bus.publish(event)

    # -- scheduling ------------------------------------------------------------------------------------

    async def schedule(self) -> None:
        """Start queued jobs, oldest first, while the backend and each consumer's quota have room."""
        # One pass at a time in the whole service: the counts read here hold until the jobs are started.
        async with self._schedule_lock, self._store.replicas.exclusive("schedule"):
            per_consumer = await self._store.jobs.active_counts_by_consumer()
            # A shared backend's capacity is the service's; a host-bound backend's is this replica's host.
            active = (
                sum(per_consumer.values())
                if self._shared
                else await self._store.jobs.active_count(owner=self._replica)
            )
            if active >= self._capacity:
                return
            # Only the queue of consumers with room: a deep queue behind a full quota costs nothing here.
            full = [c for c, n in per_consumer.items() if n >= self._per_consumer]
            for job in await self._store.jobs.queued_jobs(full):
                if active >= self._capacity:
                    return
                if per_consumer.get(job.consumer_id, 0) >= self._per_consumer:
                    continue
                if await self._submit(job):
                    active += 1
                    per_consumer[job.consumer_id] = per_consumer.get(job.consumer_id, 0) + 1

    async def _submit(self, job: Job) -> bool:
        deadline = utcnow() + timedelta(seconds=job.asset.timeouts.start)
        ref = self._backend.reference(job.id, job.consumer_id)  # stored before submit: see its docstring
        started = await self._transition(
            job.id,
            JobState.INITIALIZING,
            only_from=[JobState.QUEUED],
            deadline_at=deadline,
            backend_ref=ref,
            owner=self._replica,
        )
        if started is None:
            return False
        try:
            files = await self._store.files.files_by_ids([b.file_id for b in started.inputs])
            submitted = await self._backend.submit(build_run(started, files))
        except Exception as e:
            log.warning("submit failed", job_id=job.id, error=str(e))
            await self._transition(
                job.id,
                JobState.SYSTEM_ERROR,
                reason=Reason.SUBMIT_FAILED,
                message=f"could not start: {e}",
            )
            try:  # whatever the failed submit left in the backend
                await self._backend.cleanup(ref)
            except Exception as cleanup_error:
                log.warning("cleanup after a failed submit failed", job_id=job.id, error=str(cleanup_error))
            return False
        if submitted != ref:  # a backend breaking its own contract: follow what it started
            log.error("backend returned another reference than it named", job_id=job.id, ref=submitted)
            await self._store.jobs.update_job(job.id, backend_ref=submitted)
        now = await self._store.jobs.get_job(job.id)
        if now is not None and now.state == JobState.CANCELING:  # canceled while it was being submitted
            await self._backend.cancel(submitted)
        return True

    # -- backend updates -------------------------------------------------------------------------------

    async def apply(self, update: BackendUpdate) -> None:
        if update.phase == RunPhase.INITIALIZING:
            # The supervisor set INITIALIZING itself when it submitted: nothing to look up or wait for
            # (updates are applied one at a time, so a lookup here would delay every other job's).
            return
        target = PHASE_TO_STATE[update.phase]

        def decide(job: Job) -> Change | None:
            if not self._mine(job):
                return None
            return change_for(job, update, target, self._cancel_timeout)

        # The job is read, decided on and moved in one transaction, found by its backend reference.
        result = await self._store.jobs.transition_by_ref(update.ref, target, decide)
        if result is not None and not self._mine(result[0]):
            return  # another replica's job (a shared backend's watch shows every job to every replica)
        if result is None:
            log.warning("update for an unknown backend reference; cleaning it up", ref=update.ref)
            if update.phase not in (RunPhase.INITIALIZING, RunPhase.RUNNING):
                await self._discard_uploads(update, job=None)
                await self._backend.cleanup(update.ref)
            return
        job, done = result
        if done is not None:
            self._announce(*done)
        if target == JobState.RUNNING:
            return
        if done is None and not job.state.terminal:
            log.warning("backend reported an outcome the job cannot take", job_id=job.id, phase=update.phase)
            return
        if done is None:
            await self._discard_uploads(update, job=job)
        await self._backend.cleanup(update.ref)

    async def _discard_uploads(self, update: BackendUpdate, job: Job | None) -> None:
        """Objects a backend uploaded for a job that is gone or already ended elsewhere."""
        records = [*update.outputs, *([update.log] if update.log else [])]
        known = await self._store.files.files_by_ids([r.key.rsplit("/", 1)[-1] for r in records])
        for record in records:
            if record.key.rsplit("/", 1)[-1] not in known:
                await self._storage.delete(record.key)

    # -- cancel and delete -----------------------------------------------------------------------------

    async def cancel(self, job: Job, *, reason: str, message: str) -> Job:
        """Cancel ``job`` from the state it is in now: the caller's copy may be stale (a job seen QUEUED may
        have started since, here or on another replica), so a cancel that finds the job moved tries again
        from its new state. States only move forward, so this ends."""
        for _ in JobState:
            if job.state.terminal or job.state == JobState.CANCELING:
                return job
            if job.state == JobState.QUEUED:
                done = await self._transition(
                    job.id, JobState.CANCELED, reason=reason, message=message, only_from=[JobState.QUEUED]
                )
            else:
                deadline = utcnow() + timedelta(seconds=self._cancel_timeout)
                done = await self._transition(
                    job.id,
                    JobState.CANCELING,
                    reason=reason,
                    message=message,
                    deadline_at=deadline,
                    only_from=[JobState.INITIALIZING, JobState.RUNNING],
                )
                if done is not None and done.backend_ref and (self._shared or self._mine(done)):
                    await self._backend.cancel(done.backend_ref)  # else its owner does (_follow_cancels)
            if done is not None:
                return done
            now = await self._store.jobs.get_job(job.id)
            if now is None:
                return job
            job = now
        return job

    async def prune_finished(self, batch: int = 100) -> int:
        """Delete the jobs that ended longer than the retention period ago, with their outputs, log and
        events (a batch per pass, so a large backlog never holds a pass up); how many."""
        if self._retention is None:
            return 0
        jobs = await self._store.jobs.finished_before(utcnow() - self._retention, batch)
        for job in jobs:
            await self.forget(job)
        if jobs:
            log.info("finished jobs past their retention deleted", count=len(jobs))
        return len(jobs)

    async def forget(self, job: Job) -> None:
        """Delete a terminal job with its outputs and log."""
        for record in await self._store.files.files_of_jobs([job.id]):
            await self._store.files.delete_file(record.id)
            await self._storage.delete(record.storage_key)
        await self._store.jobs.delete_job(job.id)

    # -- deadlines and reconciliation ------------------------------------------------------------------

    async def enforce_deadlines(self) -> None:
        now = utcnow()
        for job in await self._store.jobs.live_jobs_due(now):
            if job.deadline_at is None or job.deadline_at > now:
                continue
            if job.state != JobState.QUEUED and not self._mine(job):
                continue  # its owner enforces it (or, if that replica is dead, handle_dead_replicas)
            log.warning("job deadline passed", job_id=job.id, state=job.state)
            if job.state == JobState.QUEUED:
                await self._transition(
                    job.id,
                    JobState.SYSTEM_ERROR,
                    reason=Reason.QUEUE_TIMEOUT,
                    message="no capacity became free in time",
                    only_from=[JobState.QUEUED],
                )
                continue
            reason: str | None
            if job.state == JobState.INITIALIZING:
                target, reason, msg = (
                    JobState.SYSTEM_ERROR,
                    Reason.START_TIMEOUT,
                    "the job did not start in time",
                )
            elif job.state == JobState.RUNNING:
                target, reason, msg = (
                    JobState.EXECUTOR_ERROR,
                    Reason.RUN_TIMEOUT,
                    "the job ran past its time limit",
                )
            else:
                target, reason, msg = (
                    JobState.CANCELED,
                    job.reason,
                    "the backend did not confirm the cancel in time",
                )
            done = await self._transition(job.id, target, reason=reason, message=msg, only_from=[job.state])
            if done is not None and job.backend_ref:
                await self._backend.cancel(job.backend_ref)
                await self._backend.cleanup(job.backend_ref)

    async def reconcile(self, *, startup: bool = False) -> None:
        """Ask the backend about every live job of this replica; at start-up, jobs never handed over are
        lost.

        An INITIALIZING job holds its reference from before its submit reached the backend. At start-up
        no submit of this process is under way, so one the backend does not know is lost; later, a
        submit may still be on its way, so "not known" is no verdict on an INITIALIZING job: its start
        deadline ends it if the backend never gets it. A shared backend is given every replica's live
        references (what it sweeps as orphans must spare theirs); only this replica's updates are applied.
        """
        states = [s.value for s in LIVE_BACKEND_STATES]
        adopted = await self._store.replicas.adopt_unowned(self._replica, states)
        if adopted:
            log.info("live jobs without an owner (started before replicas had ids) adopted", count=adopted)
        live = [j for j in await self._store.jobs.live_jobs() if j.state in LIVE_BACKEND_STATES]
        mine = [j for j in live if self._mine(j)]
        starting = {j.backend_ref for j in mine if j.backend_ref and j.state == JobState.INITIALIZING}
        if startup:
            for job in mine:
                if not job.backend_ref:
                    await self._transition(
                        job.id,
                        JobState.SYSTEM_ERROR,
                        reason=Reason.BACKEND_LOST,
                        message="the service stopped before the job reached the backend",
                    )
        my_refs = {j.backend_ref for j in mine if j.backend_ref}
        asked = {j.backend_ref for j in live if j.backend_ref} if self._shared else my_refs
        # Called even with nothing live: the backend also sweeps what it holds for jobs that are not.
        updates = await self._backend.reconcile(sorted(r for r in asked if r))
        for update in updates:
            if update.ref not in my_refs:
                continue
            if not startup and update.reason == Reason.BACKEND_LOST and update.ref in starting:
                continue
            await self.apply(update)

    async def handle_dead_replicas(self) -> None:
        """The jobs of replicas whose lease ran out: taken over at once on a shared backend; on a host-bound
        one, after the grace period, ended SYSTEM_ERROR/BACKEND_LOST (each once: the moves compare and set).
        One replica at a time does this pass."""
        async with self._store.replicas.exclusive("dead-replicas", wait=False) as held:
            if not held:
                return
            silent_for = self._lease + (0 if self._shared else self._grace)
            dead = await self._store.replicas.dead(utcnow() - timedelta(seconds=silent_for))
            dead = [r for r in dead if r != self._replica]
            if not dead:
                return
            for job in await self._store.jobs.live_jobs():
                if job.owner not in dead or job.state not in LIVE_BACKEND_STATES:
                    continue
                if self._shared:
                    if await self._store.replicas.take_over(job.id, job.owner, self._replica):
                        log.warning("job taken over from a dead replica", job_id=job.id, replica=job.owner)
                    continue
                await self._transition(
                    job.id,
                    JobState.SYSTEM_ERROR,
                    reason=Reason.BACKEND_LOST,
                    message=f"its replica stopped and did not come back within {silent_for:g} s",
                    only_from=[job.state],
                )
            still = {j.owner for j in await self._store.jobs.live_jobs() if j.state in LIVE_BACKEND_STATES}
            for replica in dead:
                if replica not in still:
                    await self._store.replicas.forget(replica)

    async def _follow_cancels(self) -> None:
        """Cancel in the backend this replica's jobs that another replica moved to CANCELING (a cancel
        asked through its API): a host-bound job can only be stopped where it runs."""
        if self._shared:
            return
        canceling = await self._store.jobs.in_state(JobState.CANCELING, owner=self._replica)
        self._cancels_sent &= {j.id for j in canceling}
        for job in canceling:
            if job.id not in self._cancels_sent and job.backend_ref:
                self._cancels_sent.add(job.id)
                await self._backend.cancel(job.backend_ref)

    async def _housekeeping(self) -> None:
        """Expired uploads and finished jobs past their retention: one replica at a time."""
        async with self._store.replicas.exclusive("housekeeping", wait=False) as held:
            if not held:
                return
            if self._sweep is not None:
                await self._sweep()
            await self.prune_finished()

    def _mine(self, job: Job) -> bool:
        """This replica follows ``job`` (None: a job no replica has started, or one from before owners)."""
        return job.owner is None or job.owner == self._replica
