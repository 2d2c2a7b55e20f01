"""A provider coming from the original middle-layer: its dummy asset JSON and env file, unchanged, run end to
end through the API on the container backend (podman) and on the Kubernetes backend (fake API server and
kubelet): the job ends COMPLETE and its output ``result`` holds the moved file (``/etc/os-release``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.api import Api, running_api
from tests.support.kube_backend import IMAGES, fake_kube
from tests.support.kube_kubelet import SIDECAR_IMAGE

pytestmark = pytest.mark.slow  # the original's env file sleeps 10 seconds

ROOT = Path(__file__).resolve().parents[1]
ASSET_ID = "dummy-job-original"
# What the dummy-job image holds at /etc/os-release (dummy-job/Containerfile).
IMAGE_OS_RELEASE = b'NAME="wml dummy-job"\nID=wml-dummy-job\nPRETTY_NAME="wml dummy-job (busybox)"\n'


def original_catalog(directory: Path) -> Path:
    directory.mkdir(parents=True)
    shutil.copy(ROOT / "dummy-job" / "original-asset.json", directory)
    return directory


async def run_the_original_example(api: Api) -> dict[str, object]:
    token = await api.consumer("alice", (ASSET_ID,))
    shown = await api.data(
        "query($id: ID!) { asset(id: $id) { outputDirectory inputs { name kind workerPath } } }",
        {"id": ASSET_ID},
        token=token,
    )
    assert shown["asset"] == {
        "outputDirectory": "/output",
        "inputs": [{"name": "env", "kind": "ENV", "workerPath": None}],
    }
    env_file = await api.upload(token, (ROOT / "dummy-job" / "original.env").read_bytes(), "original.env")
    created = await api.create_job(token, ASSET_ID, inputs={"env": env_file["id"]})
    assert created["__typename"] == "Job", created
    return await api.wait_for(token, str(created["id"]), timeout=60)


async def test_the_original_example_runs_on_the_container_backend(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with running_api(
        data_dir,
        catalog_dir=original_catalog(tmp_path / "catalog"),
        workflow="container://podman?conf=/etc/wml/containers.conf&stop_timeout=2",
    ) as api:
        job = await run_the_original_example(api)

        assert (job["state"], job["exitCode"]) == ("COMPLETE", 0), job
        [result] = job["outputs"]  # type: ignore[misc]
        assert result["name"] == "result"
        assert (await api.http.get(result["downloadUrl"])).content == IMAGE_OS_RELEASE
        log = (await api.http.get(job["log"]["downloadUrl"])).text  # type: ignore[index]
        assert "progress 10/10" in log
        assert "'/etc/os-release' -> '/output/result'" in log


async def test_the_original_example_runs_on_the_kubernetes_backend(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    image_etc = tmp_path / "image-etc"  # the image's /etc, as the fake kubelet runs it on this host
    image_etc.mkdir()
    (image_etc / "os-release").write_bytes(IMAGE_OS_RELEASE)
    images = {"localhost/wml/dummy-job:1": {**IMAGES["localhost/wml/dummy-job:1"], "/etc": image_etc}}
    async with (
        fake_kube(tmp_path, f"file://{data_dir / 'files'}", run_pods=True, images=images) as kube,
        running_api(
            data_dir,
            catalog_dir=original_catalog(tmp_path / "catalog"),
            workflow="kubernetes://wml-jobs?deadline_allowance=0",
            k8s_api_url=kube.api.url,
            k8s_sidecar_image=SIDECAR_IMAGE,
            k8s_retry_max_delay=0.1,
        ) as api,
    ):
        job = await run_the_original_example(api)

        assert (job["state"], job["exitCode"]) == ("COMPLETE", 0), job
        [result] = job["outputs"]  # type: ignore[misc]
        assert (await api.http.get(result["downloadUrl"])).content == IMAGE_OS_RELEASE
        assert not (image_etc / "os-release").exists()  # moved, as the original's job does
        [pod_spec] = [j["spec"]["template"]["spec"] for j in kube.api.state.created("jobs")]
        worker = pod_spec["initContainers"][1]
        assert "command" not in worker and "args" not in worker  # the image's entrypoint, as in the original
        assert {"name": "outputs", "mountPath": "/output"} in worker["volumeMounts"]
        env = {e["name"]: e for e in worker["env"]}
        assert env["WML_OUTPUT_RESULT"] == {"name": "WML_OUTPUT_RESULT", "value": "/output/result"}
        assert {"SOURCE", "DESTINATION", "SLEEPTIME"} <= {k for k, e in env.items() if "valueFrom" in e}
        await kube.nothing_left()
