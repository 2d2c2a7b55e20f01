"""The whole service with ``WML_WORKFLOW=kubernetes://...`` (settings from ``WML_K8S_*``): a consumer runs
the dummy job through the GraphQL API; the fake cluster's kubelet runs its Pod, side-cars included."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.api import running_api
from tests.support.kube_backend import fake_kube
from tests.support.kube_kubelet import SIDECAR_IMAGE


async def test_the_service_runs_a_job_on_kubernetes_from_upload_to_download(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with (
        fake_kube(tmp_path, f"file://{data_dir / 'files'}", run_pods=True) as kube,
        running_api(
            data_dir,
            workflow="kubernetes://wml-jobs?deadline_allowance=0",
            k8s_api_url=kube.api.url,
            k8s_sidecar_image=SIDECAR_IMAGE,
            k8s_retry_max_delay=0.1,
        ) as api,
    ):
        assert api.services.backend.name == "kubernetes"
        token = await api.consumer("alice")
        uploaded = await api.upload(token, b"hello from a pod\n", "data.txt")
        created = await api.create_job(token, inputs={"data": uploaded["id"]}, parameters={"SLEEPTIME": 1})
        job = await api.wait_for(token, created["id"], timeout=20)

        assert (job["state"], job["exitCode"]) == ("COMPLETE", 0), job
        [result] = job["outputs"]
        body = (await api.http.get(result["downloadUrl"])).content
        assert hashlib.sha256(body).hexdigest() == result["sha256"]
        assert b"data first line: hello from a pod" in body
        log = (await api.http.get(job["log"]["downloadUrl"])).text
        assert "progress 1/1" in log and log.endswith("done\n")
        [pod_spec] = [j["spec"]["template"]["spec"] for j in kube.api.state.created("jobs")]
        assert pod_spec["initContainers"][1]["image"] == "localhost/wml/dummy-job:1"
        await kube.nothing_left()
