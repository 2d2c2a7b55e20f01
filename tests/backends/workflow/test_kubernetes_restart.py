"""A restart of the service with Kubernetes Jobs in every phase: the new instance re-attaches to all of them
(reconcile at start-up, then its own watch), finishes those that ended while it was down, and reports
those that vanished; no job is lost and none is left behind."""

from __future__ import annotations

from pathlib import Path

from core.models import FileOrigin
from core.states import JobState
from tests.support.kube_backend import FakeKube, fake_kube
from tests.support.kube_cluster import status, terminated, waiting
from tests.support.kube_jobs import Supervised, play_outputs, supervised

PHASES_BEFORE = {  # what each job's Pod shows when the service stops, and the job's state then
    "scheduled": ("scheduled", JobState.INITIALIZING),
    "staging": ("staging", JobState.INITIALIZING),
    "working": ("working", JobState.RUNNING),
    "uploading": ("uploading", JobState.RUNNING),
    "succeeds while down": ("working", JobState.RUNNING),
    "fails while down": ("working", JobState.RUNNING),
    "deleted while down": ("working", JobState.RUNNING),
}


async def start_jobs_in_every_phase(
    kube: FakeKube, service: Supervised
) -> tuple[dict[str, str], dict[str, str]]:
    """Job ids and refs by label, each job in its phase."""
    ids, refs = {}, {}
    for label, (step, _) in PHASES_BEFORE.items():
        job = await service.queue()
        ids[label], refs[label] = job.id, await service.ref(job.id)
        await kube.cluster.step(refs[label], step)
    for label, (_, state) in PHASES_BEFORE.items():
        await service.wait(ids[label], state)
    return ids, refs


async def change_while_down(kube: FakeKube, refs: dict[str, str], service: Supervised) -> None:
    kube.cluster.log(refs["succeeds while down"], "worker", "done\n")
    manifest = await play_outputs(kube, refs["succeeds while down"], service.storage, {"result": b"ok"})
    await kube.cluster.succeed(refs["succeeds while down"], manifest)
    kube.cluster.log(refs["fails while down"], "worker", "boom\n")
    await kube.cluster.set_status(
        refs["fails while down"], status("Failed", terminated(0), terminated(2), waiting())
    )
    namespace, name = refs["deleted while down"].split("/")
    kube.api.state.delete("jobs", namespace, name, "Background")


async def test_a_restart_re_attaches_to_jobs_in_every_phase(tmp_path: Path) -> None:
    async with fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube:
        async with supervised(tmp_path, kube) as first:
            ids, refs = await start_jobs_in_every_phase(kube, first)
        await change_while_down(kube, refs, first)

        async with supervised(tmp_path, kube) as second:
            done = await second.wait(ids["succeeds while down"], JobState.COMPLETE)
            assert done.log_tail == "done"
            origins = {f.origin for f in await second.store.files.files_of_jobs([done.id])}
            assert origins == {FileOrigin.JOB_OUTPUT, FileOrigin.JOB_LOG}
            failed = await second.wait(ids["fails while down"], JobState.EXECUTOR_ERROR)
            assert (failed.reason, failed.exit_code, failed.log_tail) == ("NONZERO_EXIT", 2, "boom")
            lost = await second.wait(ids["deleted while down"], JobState.SYSTEM_ERROR)
            assert lost.reason == "BACKEND_LOST"

            # The others are followed by the new instance's watch to their end.
            for label in ("scheduled", "staging", "working", "uploading"):
                if label in ("scheduled", "staging"):
                    await kube.cluster.step(refs[label], "working")
                    await second.wait(ids[label], JobState.RUNNING)
                manifest = await play_outputs(kube, refs[label], second.storage, {"result": label.encode()})
                await kube.cluster.succeed(refs[label], manifest)
                ended = await second.wait(ids[label], JobState.COMPLETE)
                assert await second.states(ended.id) == [
                    JobState.QUEUED,
                    JobState.INITIALIZING,
                    JobState.RUNNING,
                    JobState.COMPLETE,
                ]
            assert await second.store.jobs.live_jobs() == []
            await kube.nothing_left()
