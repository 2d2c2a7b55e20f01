"""The backend's one Pod watch: it survives a dropped connection, a 410 Gone and the server ending it,
without missing a transition; the transitions below all happen while the watch is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from backends.storage.file import FileStorageBackend
from backends.workflow.base import BackendUpdate, RunPhase
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from tests.support.kube_backend import fake_kube
from tests.support.kube_cluster import status, terminated, waiting

TERMINAL = {RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.ERROR, RunPhase.CANCELED}


async def until_terminal(
    stream: AsyncIterator[BackendUpdate], refs: set[str]
) -> dict[str, list[BackendUpdate]]:
    seen: dict[str, list[BackendUpdate]] = {}
    async with asyncio.timeout(5):
        while not all(any(u.phase in TERMINAL for u in seen.get(r, [])) for r in refs):
            update = await anext(stream)
            seen.setdefault(update.ref, []).append(update)
    return seen


async def started(backend: KubernetesWorkflowBackend) -> None:
    await backend.start()
    assert backend.watcher is not None
    await asyncio.wait_for(backend.watcher.synced.wait(), 5)


async def test_a_dropped_watch_resumes_from_its_resource_version_and_misses_nothing(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await started(backend)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            await kube.cluster.step(ref, "staging")
            assert (await anext(stream)).phase == RunPhase.INITIALIZING

            kube.api.fail_next("WATCH", "pods", 503, times=2)  # and reconnecting takes a few tries
            kube.api.break_watches()
            await kube.cluster.step(ref, "working")
            kube.cluster.log(ref, "worker", "exiting 7\n")
            await kube.cluster.set_status(ref, status("Failed", terminated(0), terminated(7), waiting()))

            seen = await until_terminal(stream, {ref})
            assert [u.phase for u in seen[ref]] == [RunPhase.RUNNING, RunPhase.FAILED]
            assert (seen[ref][-1].reason, seen[ref][-1].exit_code, seen[ref][-1].log_tail) == (
                "NONZERO_EXIT",
                7,
                "exiting 7",
            )
            assert backend.watcher is not None
            assert (backend.watcher.lists, backend.watcher.resumes) == (1, 1)
            assert kube.api.count("WATCH", "pods") == 4  # the first, two refused, the resumed one
        finally:
            await backend.close()


async def test_a_watch_whose_version_expired_relists_and_misses_nothing(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await started(backend)
        try:
            stream = backend.updates()
            moving, vanishing = await backend.submit(make_run()), await backend.submit(make_run())
            await kube.cluster.step(vanishing, "working")
            await kube.cluster.pod_of(moving)
            async with asyncio.timeout(5):
                while backend._tracker.phases.get(vanishing) != RunPhase.RUNNING:
                    await asyncio.sleep(0.01)

            kube.api.break_watches()
            await kube.cluster.step(moving, "working")
            await kube.cluster.set_status(
                moving, status("Failed", terminated(0), terminated(0), terminated(5))
            )
            namespace, name = vanishing.split("/")
            kube.api.state.delete(
                "jobs", namespace, name, "Background"
            )  # its DELETED events are compacted away
            kube.api.state.compact()

            seen = await until_terminal(stream, {moving, vanishing})
            assert [u.phase for u in seen[moving]] == [
                RunPhase.INITIALIZING,
                RunPhase.RUNNING,
                RunPhase.ERROR,
            ]
            assert seen[moving][-1].reason == "OUTPUT_UPLOAD_FAILED"
            assert (seen[vanishing][-1].phase, seen[vanishing][-1].reason) == (RunPhase.ERROR, "BACKEND_LOST")
            assert backend.watcher is not None
            assert backend.watcher.lists == 2  # the first list, and the one after 410 Gone
        finally:
            await backend.close()


async def test_the_watch_asks_the_server_to_end_it_and_resumes_when_it_does(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage, watch_timeout=42)
        await started(backend)
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            assert (await anext(stream)).phase == RunPhase.INITIALIZING
            kube.api.end_watches()  # as the server does after timeoutSeconds
            await kube.cluster.step(ref, "working")

            update = await asyncio.wait_for(anext(stream), 5)
            assert (update.ref, update.phase) == (ref, RunPhase.RUNNING)
            watches = [c for c in kube.api.requests if c.method == "WATCH"]
            assert len(watches) == 2
            assert all(c.query["timeoutSeconds"] == "42" for c in watches)
            assert all(
                c.query["labelSelector"] == "app.kubernetes.io/managed-by=workflow-middlelayer"
                for c in watches
            )
            assert int(watches[1].query["resourceVersion"]) > int(watches[0].query["resourceVersion"])
            assert kube.api.count("GET", "pods") == 1  # listed once, never again
        finally:
            await backend.close()
