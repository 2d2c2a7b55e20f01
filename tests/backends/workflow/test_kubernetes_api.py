"""The Kubernetes API adapter: retries of transient failures, a rate limit, and domain errors that name
the object but never quote a Secret; plus following a worker's log."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import RunPhase, WorkflowBackendError
from backends.workflow.kubernetes.api import TokenBucket
from backends.workflow.kubernetes.config import Connection
from tests.support.kube_backend import NAMESPACE, fake_kube
from tests.support.kube_cluster import status, terminated, waiting


async def test_transient_failures_are_retried_and_retry_after_is_honoured(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            kube.api.fail_next("POST", "jobs", 503, times=2)
            kube.api.fail_next("POST", "secrets", 429, retry_after="0.3")
            began = time.monotonic()
            ref = await backend.submit(make_run())

            assert time.monotonic() - began >= 0.3
            assert (kube.api.count("POST", "jobs"), kube.api.count("POST", "secrets")) == (3, 2)
            assert kube.api.state.get("jobs", NAMESPACE, ref.split("/")[1]) is not None
        finally:
            await backend.close()


async def test_refusals_become_domain_errors_naming_the_object(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            kube.api.fail_next("POST", "jobs", 403)
            with pytest.raises(WorkflowBackendError, match=r"create Job wml-jobs/wml-job-\d+ failed: 403"):
                await backend.submit(make_run())
            kube.api.fail_next("GET", "jobs", 503, times=10)
            with pytest.raises(WorkflowBackendError, match="list Job wml-jobs/\\* failed: 503"):
                await backend.reconcile(["wml-jobs/wml-x"])
            assert kube.api.count("GET", "jobs") == 4  # three retries, then it gives up
            assert kube.leftovers() == []
        finally:
            await backend.close()


async def test_a_refused_secret_removes_its_job_and_never_quotes_the_server(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            kube.api.fail_next("POST", "secrets", 422)
            with pytest.raises(WorkflowBackendError) as refused:
                await backend.submit(make_run())
            assert "create Secret wml-jobs/wml-job-" in str(refused.value)
            assert "injected by the test" not in str(refused.value)  # the server's message may quote the data
            await kube.nothing_left()
        finally:
            await backend.close()


async def test_an_unreachable_api_server_is_a_clear_error(
    tmp_path: Path, storage: FileStorageBackend, make_run
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage, connection=Connection(api_url=f"http://127.0.0.1:{port}"), retries=1)
        await backend.start()
        try:
            with pytest.raises(WorkflowBackendError, match="the API server is unreachable"):
                await backend.submit(make_run())
        finally:
            await backend.close()


async def test_the_token_bucket_limits_the_request_rate() -> None:
    bucket = TokenBucket(rate=50.0, burst=2)
    began = time.monotonic()
    for _ in range(7):
        await bucket.take()
    assert time.monotonic() - began >= 0.09  # two at once, then five at 50 a second


async def test_following_the_log_waits_for_the_worker_and_ends_with_it(
    tmp_path: Path, storage: FileStorageBackend, make_run, read_object
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        backend = kube.backend(storage)
        await backend.start()
        try:
            stream = backend.updates()
            ref = await backend.submit(make_run())
            await kube.cluster.step(ref, "staging")

            async def follow() -> list[str]:
                return [line async for line in backend.logs(ref, follow=True)]

            following = asyncio.create_task(follow())
            await asyncio.sleep(0.1)
            assert not following.done()  # the worker has not started
            await kube.cluster.step(ref, "working")
            for i in range(3):
                kube.cluster.log(ref, "worker", f"progress {i}\n")
                await asyncio.sleep(0.02)
            await kube.cluster.set_status(ref, status("Failed", terminated(0), terminated(1), waiting()))
            assert await asyncio.wait_for(following, 5) == ["progress 0", "progress 1", "progress 2"]

            async with asyncio.timeout(5):
                while (update := await anext(stream)).phase != RunPhase.FAILED:
                    pass
            # With the Pod gone (the Job's TTL, say), the log saved to storage is what is left.
            namespace = ref.split("/")[0]
            kube.api.state.delete("pods", namespace, await kube.cluster.pod_of(ref))
            assert update.log is not None
            assert [line async for line in backend.logs(ref, follow=False)] == [
                "progress 0",
                "progress 1",
                "progress 2",
            ]
            assert await read_object(update.log.key) == b"progress 0\nprogress 1\nprogress 2\n"
        finally:
            await backend.close()
