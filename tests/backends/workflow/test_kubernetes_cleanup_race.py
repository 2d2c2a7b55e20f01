"""The worker log is saved before cleanup, however reconcile and cleanup interleave, and a run costs the
same few API requests each time: a run is finished once and cleaned up once per process."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from backends.storage.file import FileStorageBackend
from backends.workflow.base import RunPhase
from core.models import FileOrigin
from core.states import JobState
from tests.backends.workflow.test_kubernetes_cleanup import started, succeed, terminal
from tests.support.kube_backend import fake_kube
from tests.support.kube_jobs import supervised


async def test_a_reconcile_whose_lists_predate_the_cleanup_knows_the_run_no_more_and_finishes_nothing(
    tmp_path: Path, storage: FileStorageBackend, make_run, read_object
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            await succeed(kube, ref, storage)
            final = await terminal(stream, ref)
            assert final.log is not None and await read_object(final.log.key) == b"done\n"

            # The run is cleaned up after reconcile listed its Job and its finished Pod, before it answers.
            kube.api.before_next("GET", "secrets", lambda: backend.cleanup(ref))
            before = len(kube.api.requests)
            [answer] = await backend.reconcile([ref])

            assert (answer.phase, answer.reason) == (RunPhase.ERROR, "BACKEND_LOST")  # like every backend
            made = Counter((c.method, c.plural) for c in kube.api.requests[before:])
            lists = {("GET", "jobs"): 1, ("GET", "pods"): 1, ("GET", "secrets"): 1}
            assert made == {**lists, ("DELETE", "jobs"): 1}  # the cleanup's, and no log read
            assert await read_object(final.log.key) == b"done\n"  # not overwritten by a second finish
            await backend.cleanup(ref)  # asked again (by whoever applied that answer): nothing to do
            assert len(kube.api.requests) - before == 4
            assert kube.leftovers() == []
        finally:
            await backend.close()


async def test_a_sweep_whose_lists_predate_the_cleanup_does_not_delete_the_run_again(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            await succeed(kube, ref, storage)
            await terminal(stream, ref)

            # The supervisor's reconcile no longer counts the run as live; its cleanup lands between the
            # lists (which still show the Job) and the sweep.
            kube.api.before_next("GET", "secrets", lambda: backend.cleanup(ref))
            before = len(kube.api.requests)
            assert await backend.reconcile([]) == []

            made = Counter((c.method, c.plural) for c in kube.api.requests[before:])
            assert made == {
                ("GET", "jobs"): 1,
                ("GET", "pods"): 1,
                ("GET", "secrets"): 1,
                ("DELETE", "jobs"): 1,
            }
            assert kube.leftovers() == []
        finally:
            await backend.close()


async def test_cleanup_waits_for_a_finishing_still_saving_the_log(
    tmp_path: Path, storage: FileStorageBackend, make_run, read_object
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            gate = asyncio.Event()

            async def log_read_blocks_until_cleanup_was_asked() -> None:
                asyncio.get_running_loop().call_soon(gate.set)
                await asyncio.sleep(0.2)  # cleanup has been asked meanwhile

            kube.api.before_next("LOG", "pods/log", log_read_blocks_until_cleanup_was_asked)
            await succeed(kube, ref, storage, in_message=True)
            await gate.wait()
            await backend.cleanup(ref)  # while the worker log is being read

            assert kube.leftovers() == []
            final = await terminal(stream, ref)
            assert final.phase == RunPhase.SUCCEEDED
            assert final.log is not None and await read_object(final.log.key) == b"done\n"
        finally:
            await backend.close()


async def test_jobs_run_by_the_supervisor_with_reconciles_in_between_all_keep_their_log_at_a_constant_cost(
    tmp_path: Path,
) -> None:
    jobs = 6
    async with (
        fake_kube(tmp_path, f"file://{tmp_path / 'files'}", run_pods=True) as kube,
        supervised(tmp_path, kube, reconcile_interval=0.02) as s,
    ):
        before = len(kube.api.requests)
        queued = [await s.queue(parameters={"SLEEPTIME": "0"}) for _ in range(jobs)]
        for job in queued:
            await s.wait(job.id, JobState.COMPLETE, timeout=30)
        await kube.nothing_left()

        for job in queued:
            files = await s.store.files.files_of_jobs([job.id])
            [log] = [f for f in files if f.origin == FileOrigin.JOB_LOG]
            text = b"".join([c async for c in s.storage.get(log.storage_key)])
            assert b"done" in text
            assert [f.origin for f in files].count(FileOrigin.JOB_OUTPUT) == 1  # registered from the message
        calls = kube.api.requests[before:]
        lists = [c for c in calls if c.method == "GET" and c.name is None]
        assert len(lists) >= 3 * 2, "reconcile ran while the jobs did"
        made = Counter((c.method, c.plural) for c in calls if c not in lists)
        # Four per job: stage-out's manifest comes in its termination message, only the worker log is read.
        assert made == {
            ("POST", "jobs"): jobs,
            ("POST", "secrets"): jobs,
            ("LOG", "pods/log"): jobs,
            ("DELETE", "jobs"): jobs,
        }
