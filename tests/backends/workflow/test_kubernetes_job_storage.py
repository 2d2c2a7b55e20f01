"""Kubernetes job storage like the original's options: emptyDir volumes (the default) or one
PersistentVolumeClaim per job (a generic ephemeral volume, created and deleted with the Pod); and a failed
job's Job and Pod kept for a while for debugging."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import kubernetes_validate

from backends.workflow.base import InputKind, StagedInput
from backends.workflow.kubernetes.manifests import KEEP_UNTIL_ANNOTATION, job_manifest, job_name
from core.states import JobState
from tests.backends.workflow.test_kubernetes_manifests import OPTIONS, RUN, containers
from tests.support.kube_backend import FakeKube, fake_kube
from tests.support.kube_cluster import status, terminated, waiting
from tests.support.kube_jobs import play_outputs, supervised

PVC = replace(OPTIONS, job_volume="pvc", job_volume_size="50Gi", job_volume_storage_class="fast-ssd")


def test_emptydir_volumes_stay_the_default() -> None:
    spec = job_manifest(RUN, job_name(RUN.job_id), "wml-jobs", OPTIONS, [])["spec"]["template"]["spec"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["inputs"] and "emptyDir" in volumes["outputs"]
    assert "job-data" not in volumes


def test_with_pvc_the_inputs_and_outputs_live_on_one_claim_of_the_pods_own() -> None:
    placed = StagedInput(
        "maps", InputKind.ARCHIVE, "maps", "consumers/c/files/f_maps", 5, "c" * 64, (), "/opt/maps"
    )
    run = replace(RUN, inputs=(*RUN.inputs, placed), output_dir="/home/carla/rosbag")

    job = job_manifest(run, job_name(run.job_id), "wml-jobs", PVC, [])

    kubernetes_validate.validate(job, "1.37.0", strict=True)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert "inputs" not in volumes and "outputs" not in volumes
    template = volumes["job-data"]["ephemeral"]["volumeClaimTemplate"]
    assert template["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "50Gi"}},
        "storageClassName": "fast-ssd",
    }
    assert template["metadata"]["labels"]["wml/job-id"] == run.job_id
    mounts = {n: {m["mountPath"]: m.get("subPath") for m in c["volumeMounts"] if m["name"] == "job-data"}
              for n, c in containers(job).items()}  # fmt: skip
    assert mounts["stage-in"] == {"/wml/inputs": "inputs"}
    assert mounts["worker"] == {
        "/wml/inputs": "inputs",
        "/home/carla/rosbag": "outputs",
        "/opt/maps": "inputs/maps",
    }
    assert mounts["stage-out"] == {"/wml/outputs": "outputs"}
    without_class = job_manifest(run, "j", "wml-jobs", replace(PVC, job_volume_storage_class=None), [])
    claim = without_class["spec"]["template"]["spec"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"][
        "spec"
    ]
    assert "storageClassName" not in claim  # the cluster's default class


async def test_a_job_on_a_pvc_runs_to_complete(tmp_path: Path) -> None:
    async with (
        fake_kube(tmp_path, f"file://{tmp_path / 'files'}", run_pods=True) as kube,
        supervised(tmp_path, kube, job_volume="pvc") as s,
    ):
        job = await s.queue()

        done = await s.wait(job.id, JobState.COMPLETE, timeout=30)

        assert done.exit_code == 0
        [pod_spec] = [j["spec"]["template"]["spec"] for j in kube.api.state.created("jobs")]
        assert "ephemeral" in pod_spec["volumes"][0]
        await kube.nothing_left()


async def test_a_failed_job_is_kept_for_debugging_then_swept(tmp_path: Path) -> None:
    async with (
        fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube,
        supervised(tmp_path, kube, keep_failed_for=600) as s,
    ):
        job = await s.queue()
        ref = await s.ref(job.id)
        await s.wait(job.id, JobState.INITIALIZING)
        await kube.cluster.step(ref, "working")
        await kube.cluster.set_status(ref, status("Failed", terminated(0), terminated(3), waiting()))
        await s.wait(job.id, JobState.EXECUTOR_ERROR)
        namespace, name = ref.split("/")

        for _ in range(100):  # cleanup follows the terminal state
            kept = kube.api.state.get("jobs", namespace, name)
            if kept and KEEP_UNTIL_ANNOTATION in (kept["metadata"].get("annotations") or {}):
                break
            await asyncio.sleep(0.05)
        assert kept is not None
        until = float(kept["metadata"]["annotations"][KEEP_UNTIL_ANNOTATION])
        assert time.time() + 500 < until <= time.time() + 600
        assert kept["spec"]["ttlSecondsAfterFinished"] == 600
        assert ("jobs", "patch") in kube.verbs_used()

        await s.backend.reconcile([])  # the orphan sweep leaves it while it is kept
        assert kube.api.state.get("jobs", namespace, name) is not None

        kube.api.state.patch(
            "jobs", namespace, name, {"metadata": {"annotations": {KEEP_UNTIL_ANNOTATION: "1"}}}
        )
        await s.backend.reconcile([])
        assert kube.api.state.get("jobs", namespace, name) is None


async def test_a_job_whose_image_cannot_be_pulled_is_kept_too_and_a_complete_one_is_not(
    tmp_path: Path,
) -> None:
    async with (
        fake_kube(tmp_path, f"file://{tmp_path / 'files'}") as kube,
        supervised(tmp_path, kube, keep_failed_for=600) as s,
    ):
        pulled = await s.queue()
        ref = await s.ref(pulled.id)
        await s.wait(pulled.id, JobState.INITIALIZING)
        # The Job is never marked Failed: its Pod stays Pending. The run's own outcome decides.
        await kube.cluster.set_status(
            ref, status("Pending", terminated(0), waiting("ErrImagePull", "no"), waiting())
        )
        done = await s.wait(pulled.id, JobState.SYSTEM_ERROR)
        assert done.reason == "IMAGE_PULL_FAILED"
        namespace, name = ref.split("/")
        assert await _kept_eventually(kube, namespace, name)

        completed = await s.queue()
        other = await s.ref(completed.id)
        await s.wait(completed.id, JobState.INITIALIZING)
        await kube.cluster.step(other, "working")
        manifest = await play_outputs(kube, other, s.storage, {"result": b"ok\n"})
        await kube.cluster.succeed(other, manifest)
        await s.wait(completed.id, JobState.COMPLETE)
        for _ in range(100):
            if kube.api.state.get("jobs", *other.split("/")) is None:
                break
            await asyncio.sleep(0.05)
        assert kube.api.state.get("jobs", *other.split("/")) is None  # removed at once, as before


async def _kept_eventually(kube: FakeKube, namespace: str, name: str) -> bool:
    for _ in range(100):
        job = kube.api.state.get("jobs", namespace, name)
        if job and KEEP_UNTIL_ANNOTATION in (job["metadata"].get("annotations") or {}):
            return True
        await asyncio.sleep(0.05)
    return False
