"""Two replicas of the service on one PostgreSQL database, each with its own Kubernetes backend (its own
watch) against one fake API server: every job is submitted once, its pod events are applied by the one
replica that owns it (both watches see every pod), and when a replica dies the other takes its jobs over
at the end of its lease and follows them to their end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.states import JobState
from tests.support.kube_backend import fake_kube
from tests.support.kube_jobs import Supervised, play_outputs, supervised

JOBS = 6


async def owner_of(service: Supervised, job_id: str) -> str | None:
    job = await service.store.jobs.get_job(job_id)
    assert job is not None
    return job.owner


async def test_two_replicas_share_the_cluster_and_one_takes_over_the_others_jobs(
    tmp_path: Path, pg_url: str
) -> None:
    options = {"database_url": pg_url, "lease": 1.0, "reconcile_interval": 0.3}
    async with (
        fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube,
        supervised(tmp_path, kube, replica="a", **options) as a,
    ):
        dying = supervised(tmp_path, kube, replica="b", **options)
        b = await dying.__aenter__()
        try:
            jobs = [await (a if n % 2 else b).queue() for n in range(JOBS)]
            refs = {j.id: await a.ref(j.id) for j in jobs}
            for ref in refs.values():
                await kube.cluster.step(ref, "working")
            for job in jobs:
                await a.wait(job.id, JobState.RUNNING)
            owners = {j.id: await owner_of(a, j.id) for j in jobs}
            assert set(owners.values()) <= {"a", "b"}
        finally:
            await dying.__aexit__(None, None, None)  # b stops: its lease is no longer renewed

        # Taken over within the lease (1 s) and a reconcile pass or two.
        async with asyncio.timeout(10):
            while [j for j in jobs if await owner_of(a, j.id) != "a"]:
                await asyncio.sleep(0.05)
        for job in jobs:
            manifest = await play_outputs(kube, refs[job.id], a.storage, {"result": b"done"})
            await kube.cluster.succeed(refs[job.id], manifest)
        for job in jobs:
            await a.wait(job.id, JobState.COMPLETE, timeout=15)
            assert await a.states(job.id) == [
                JobState.QUEUED,
                JobState.INITIALIZING,
                JobState.RUNNING,
                JobState.COMPLETE,
            ]

    assert len(kube.api.state.created("jobs")) == JOBS  # each submitted once
    assert "b" in owners.values()  # b had jobs of its own to lose
