"""Jobs on the Kubernetes backend through core's Supervisor, the test playing the cluster: every row of the
Pod/Job -> state table in backends/workflow/kubernetes/status.py ends in the right state and reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from backends.storage.file import FileStorageBackend
from core.models import FileOrigin
from core.states import JobState
from tests.support.kube_backend import FakeKube, fake_kube
from tests.support.kube_cluster import running, status, terminated, waiting
from tests.support.kube_jobs import ASSET, play_outputs, supervised

Q, INIT, R, C = JobState.QUEUED, JobState.INITIALIZING, JobState.RUNNING, JobState.COMPLETE
T0 = terminated(0)


async def test_a_job_goes_queued_initializing_running_complete_with_outputs_from_the_manifest(
    tmp_path: Path,
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube, supervised(tmp_path, kube) as s:
        job = await s.queue()
        ref = await s.ref(job.id)
        await s.wait(job.id, INIT)
        await kube.cluster.step(ref, "staging")
        await kube.cluster.step(ref, "working")
        await s.wait(job.id, R)
        kube.cluster.log(ref, "worker", "progress 1/1\nresult written\ndone\n")
        await kube.cluster.step(ref, "uploading")
        assert (await s.store.jobs.get_job(job.id)).state == R  # type: ignore[union-attr]
        manifest = await play_outputs(kube, ref, s.storage, {"result": b"forty-two\n"})
        await kube.cluster.succeed(ref, manifest)

        done = await s.wait(job.id, C)
        assert await s.states(job.id) == [Q, INIT, R, C]
        assert (done.reason, done.exit_code, done.log_tail) == (None, 0, "progress 1/1\nresult written\ndone")
        files = {f.origin: f for f in await s.store.files.files_of_jobs([job.id])}
        assert (files[FileOrigin.JOB_OUTPUT].name, files[FileOrigin.JOB_OUTPUT].size) == ("result.txt", 10)
        assert files[FileOrigin.JOB_OUTPUT].sha256 == manifest.outputs[0].sha256
        log = b"".join([c async for c in s.storage.get(files[FileOrigin.JOB_LOG].storage_key)])
        assert log == b"progress 1/1\nresult written\ndone\n"
        await kube.nothing_left()


Script = Callable[[FakeKube, str, FileStorageBackend], Awaitable[None]]


async def _image_pull(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.set_status(
        ref, status("Pending", T0, waiting("ImagePullBackOff", "back-off"), waiting())
    )


async def _sidecar_image_invalid(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.set_status(ref, status("Pending", waiting("InvalidImageName"), waiting(), waiting()))


async def _stage_in_failed(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    said = (
        '{"event": "sidecar_failed", "error": "input \'data\': sha256 does not match; the object is corrupt"}'
    )
    await kube.cluster.step(ref, "staging")
    await kube.cluster.set_status(ref, status("Failed", terminated(3, message=said), waiting(), waiting()))


async def _worker_failed(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    kube.cluster.log(ref, "worker", "failing with exit code 3 as asked\n")
    await kube.cluster.set_status(ref, status("Failed", T0, terminated(3), waiting()))


async def _oom_killed(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    await kube.cluster.set_status(ref, status("Failed", T0, terminated(137, "OOMKilled"), waiting()))


async def _pod_deadline(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    new = status("Failed", T0, terminated(143), waiting(), reason="DeadlineExceeded", message="too long")
    await kube.cluster.set_status(ref, new)


async def _job_deadline(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    await kube.cluster.deadline_job(ref)


async def _stage_out_failed(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "uploading")
    said = '{"event": "sidecar_failed", "error": "storage failed: connection refused"}'
    await kube.cluster.set_status(ref, status("Failed", T0, T0, terminated(5, message=said)))


async def _output_missing(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "uploading")
    manifest = await play_outputs(kube, ref, storage, {})
    kube.cluster.log(ref, "stage-out", f"wml-output-manifest: {manifest.model_dump_json()}\n")
    await kube.cluster.set_status(ref, status("Failed", T0, T0, terminated(4)))


async def _no_output_manifest(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "uploading")
    await kube.cluster.set_status(ref, status("Succeeded", T0, T0, T0))


async def _evicted(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    gone = status("Failed", T0, running(), waiting(), reason="Evicted", message="The node was low on memory.")
    await kube.cluster.set_status(ref, gone)


async def _pod_deleted(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    kube.api.state.delete("pods", ref.split("/")[0], await kube.cluster.pod_of(ref))


async def _job_deleted(kube: FakeKube, ref: str, storage: FileStorageBackend) -> None:
    await kube.cluster.step(ref, "working")
    namespace, name = ref.split("/")
    kube.api.state.delete("jobs", namespace, name, "Background")


E, S = JobState.EXECUTOR_ERROR, JobState.SYSTEM_ERROR
ROWS: list[tuple[str, Script, JobState, str, int | None, bool]] = [  # ..., whether a worker log is saved
    ("image pull", _image_pull, S, "IMAGE_PULL_FAILED", None, False),
    ("invalid side-car image", _sidecar_image_invalid, S, "IMAGE_PULL_FAILED", None, False),
    ("stage-in failed", _stage_in_failed, S, "INPUT_STAGING_FAILED", None, False),
    ("worker exit 3", _worker_failed, E, "NONZERO_EXIT", 3, True),
    ("worker OOMKilled", _oom_killed, E, "OOM_KILLED", 137, True),
    ("pod deadline", _pod_deadline, E, "RUN_TIMEOUT", 143, True),
    ("job deadline", _job_deadline, E, "RUN_TIMEOUT", None, False),
    ("stage-out failed", _stage_out_failed, S, "OUTPUT_UPLOAD_FAILED", 0, True),
    ("stage-out exit 4", _output_missing, E, "OUTPUT_MISSING", 0, True),
    ("no output manifest", _no_output_manifest, S, "OUTPUT_UPLOAD_FAILED", 0, True),
    ("evicted", _evicted, S, "EVICTED", None, True),
    ("pod deleted", _pod_deleted, S, "EVICTED", None, False),
    ("job deleted", _job_deleted, S, "BACKEND_LOST", None, False),
]


@pytest.mark.parametrize(
    ("script", "state", "reason", "exit_code", "logged"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
async def test_every_failure_row_of_the_table_ends_in_its_state_and_reason(
    tmp_path: Path, script: Script, state: JobState, reason: str, exit_code: int | None, logged: bool
) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube, supervised(tmp_path, kube) as s:
        job = await s.queue()
        ref = await s.ref(job.id)
        await s.wait(job.id, INIT)
        await script(kube, ref, s.storage)

        ended = await s.wait(job.id, state)
        assert (ended.reason, ended.exit_code) == (reason, exit_code)
        assert ended.message
        if reason == "INPUT_STAGING_FAILED":
            assert "sha256 does not match" in ended.message
        if reason == "OUTPUT_MISSING":
            assert ended.message == "required outputs missing: result"
        origins = [f.origin for f in await s.store.files.files_of_jobs([job.id])]
        assert origins == ([FileOrigin.JOB_LOG] if logged else [])
        await kube.nothing_left()


async def test_a_pod_pending_past_the_start_timeout_ends_start_timeout_and_is_removed(tmp_path: Path) -> None:
    slow = ASSET.model_copy(update={"timeouts": ASSET.timeouts.model_copy(update={"start": 1})})
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube, supervised(tmp_path, kube) as s:
        await s.store.assets.sync_assets([slow])
        job = await s.queue(slow)
        ref = await s.ref(job.id)
        # A Secret the kubelet cannot use yet is retried by Kubernetes, not a failure of ours.
        await kube.cluster.set_status(
            ref, status("Pending", waiting("CreateContainerConfigError"), waiting(), waiting())
        )

        ended = await s.wait(job.id, JobState.SYSTEM_ERROR, timeout=5)
        assert ended.reason == "START_TIMEOUT"
        await kube.nothing_left()
