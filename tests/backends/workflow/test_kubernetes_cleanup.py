"""Cancel, cleanup and the orphan sweep leave no labelled object behind; API requests per job are counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

from backends.storage.file import FileStorageBackend
from backends.workflow.base import BackendUpdate, RunPhase
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from backends.workflow.kubernetes.manifests import RBAC_NEEDS
from tests.support.kube_backend import NAMESPACE, FakeKube, fake_kube
from tests.support.kube_jobs import play_outputs

TERMINAL = {RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.ERROR, RunPhase.CANCELED}


async def terminal(stream: AsyncIterator[BackendUpdate], ref: str) -> BackendUpdate:
    async with asyncio.timeout(5):
        while True:
            update = await anext(stream)
            if update.ref == ref and update.phase in TERMINAL:
                return update


async def started(
    kube: FakeKube, storage: FileStorageBackend, **options: object
) -> KubernetesWorkflowBackend:
    backend = kube.backend(storage, **options)
    watching = kube.api.count("WATCH", "pods")
    await backend.start()
    assert backend.watcher is not None
    await asyncio.wait_for(backend.watcher.synced.wait(), 5)
    async with asyncio.timeout(5):  # and the watch is open
        while kube.api.count("WATCH", "pods") <= watching:
            await asyncio.sleep(0.01)
    return backend


async def succeed(kube: FakeKube, ref: str, storage: FileStorageBackend, *, in_message: bool = False) -> None:
    await kube.cluster.step(ref, "working")
    kube.cluster.log(ref, "worker", "done\n")
    await kube.cluster.step(ref, "uploading")
    await kube.cluster.succeed(
        ref, await play_outputs(kube, ref, storage, {"result": b"r"}), in_message=in_message
    )


async def test_cancel_saves_the_log_deletes_the_job_in_the_background_and_is_idempotent(
    tmp_path: Path, storage: FileStorageBackend, make_run, read_object
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            run = make_run()
            ref = await backend.submit(run)
            await kube.cluster.step(ref, "working")
            kube.cluster.log(ref, "worker", "progress 1/9\n")
            async with asyncio.timeout(5):
                while backend._tracker.phases.get(ref) != RunPhase.RUNNING:
                    await asyncio.sleep(0.01)

            await backend.cancel(ref)
            final = await terminal(stream, ref)
            assert (final.phase, final.outputs, final.log_tail) == (RunPhase.CANCELED, (), "progress 1/9")
            assert final.log is not None and await read_object(final.log.key) == b"progress 1/9\n"
            [delete] = [c for c in kube.api.requests if c.method == "DELETE" and c.plural == "jobs"]
            assert delete.query["propagationPolicy"] == "Background"
            assert kube.api.state.select("pods", NAMESPACE) == []  # gone with its Job

            before = len(kube.api.requests)
            await backend.cancel(ref)  # again: nothing happens
            await backend.cancel(f"{NAMESPACE}/wml-never-submitted")  # 404 is success
            await backend.cancel("not-a-ref")
            assert [c.method for c in kube.api.requests[before:]] == ["DELETE"]
            await backend.cleanup(ref)
            await kube.nothing_left()
        finally:
            await backend.close()


async def test_cleanup_removes_the_job_its_pod_and_its_secret(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            await succeed(kube, ref, storage)
            assert (await terminal(stream, ref)).phase == RunPhase.SUCCEEDED
            kinds = {key[0] for key in kube.leftovers()}
            assert kinds == {"jobs", "pods", "secrets"}

            await backend.cleanup(ref)
            await backend.cleanup(ref)  # twice is fine
            assert kube.leftovers() == []
        finally:
            await backend.close()


async def test_the_orphan_sweep_removes_objects_of_jobs_that_are_terminal_or_unknown(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        first = await started(kube, storage)
        try:
            finished, live, unknown = [await first.submit(make_run()) for _ in range(3)]
            await succeed(kube, finished, storage)
            await kube.cluster.step(live, "working")
            state = kube.api.state
            lonely = {
                "metadata": {
                    "name": "wml-lonely",
                    "labels": {"app.kubernetes.io/managed-by": "workflow-middlelayer"},
                }
            }
            state.create("secrets", NAMESPACE, lonely)  # left by a submit that failed half-way
            state.create("secrets", NAMESPACE, {"metadata": {"name": "not-ours"}})
            # The process that submitted them protects them for a while, whatever the live refs say.
            await first.reconcile([])
            assert {k[2] for k in kube.leftovers() if k[0] == "jobs"} == {
                r.split("/")[1] for r in (finished, live, unknown)
            }
        finally:
            await first.close()

        patient = await started(kube, storage, orphan_grace=3600)  # too young to be swept
        await patient.reconcile([live])
        await patient.close()
        assert len([k for k in kube.leftovers() if k[0] == "jobs"]) == 3

        second = await started(kube, storage)  # a restarted service: only ``live`` is a live job
        try:
            [update] = await second.reconcile([live])
            assert update.phase == RunPhase.RUNNING
            name = live.split("/")[1]
            assert sorted(kube.leftovers()) == [
                ("jobs", NAMESPACE, name),
                ("pods", NAMESPACE, await kube.cluster.pod_of(live)),
                ("secrets", NAMESPACE, name),
            ]
            assert state.get("secrets", NAMESPACE, "not-ours") is not None
        finally:
            await second.close()


async def test_api_requests_per_job_are_a_small_constant_whatever_happens_in_between(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = await started(kube, storage)
        try:
            stream = backend.updates()
            counts = []
            for jobs, noise in ((1, 0), (4, 0), (4, 40)):
                before = len(kube.api.requests)
                for _ in range(jobs):
                    ref = await backend.submit(make_run())
                    await kube.cluster.step(ref, "staging")
                    for i in range(noise):  # status changes that tell nothing new, and time passing
                        kube.cluster.log(ref, "stage-in", f"fetching {i}\n")
                        await kube.cluster.step(ref, "staging" if i % 2 else "scheduled")
                    await asyncio.sleep(0.05)
                    await succeed(kube, ref, storage, in_message=True)
                    assert (await terminal(stream, ref)).phase == RunPhase.SUCCEEDED
                    await backend.cleanup(ref)
                made = Counter((c.method, c.plural) for c in kube.api.requests[before:])
                counts.append({k: v / jobs for k, v in made.items()})

            per_job = {
                ("POST", "jobs"): 1,
                ("POST", "secrets"): 1,
                ("LOG", "pods/log"): 1,  # the worker log, saved to storage
                ("DELETE", "jobs"): 1,  # the Pod and the Secret (owned by the Job) go with it
            }
            assert counts == [per_job, per_job, per_job]
            assert sum(per_job.values()) == 4

            # Without the manifest in stage-out's termination message it is read from its log: one more.
            before = len(kube.api.requests)
            ref = await backend.submit(make_run())
            await succeed(kube, ref, storage)
            await terminal(stream, ref)
            await backend.cleanup(ref)
            assert len(kube.api.requests) - before == 5
            assert kube.api.count("GET", "pods") == 1 and kube.api.count("WATCH", "pods") == 1  # for all jobs
            granted = {(resource, verb) for _, resource, verbs in RBAC_NEEDS for verb in verbs}
            assert kube.verbs_used() <= granted
        finally:
            await backend.close()
