"""GPU requests are never ignored: createJob refuses a GPU asset on a backend that cannot give one (the
local backend; the container backend unless configured with GPUs; Kubernetes configured without), naming
the asset and the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.states import JobState
from tests.support.api import running_api
from tests.support.catalog import CARLA
from tests.support.kube_backend import fake_kube
from tests.support.kube_kubelet import SIDECAR_IMAGE

BACKENDS = {
    "local": ("local://", "the local backend has none"),
    "container": (
        "container://podman?conf=/etc/wml/containers.conf",
        "the container backend cannot honour its GPU request",
    ),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_a_gpu_asset_is_refused_at_create_job_where_no_gpu_can_be_given(
    tmp_path: Path, backend: str
) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "carla.json").write_text(json.dumps(CARLA), encoding="utf-8")
    workflow, says = BACKENDS[backend]
    async with running_api(tmp_path / "data", catalog_dir=catalog, workflow=workflow) as api:
        token = await api.consumer("alice", ("carla",))
        env = await api.upload(token, b"TOWN=Town01\n", "carla.env")

        refused = await api.create_job(token, "carla", inputs={"env": env["id"]})

        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == "assetId"
        assert refused["message"].startswith("asset 'carla' cannot run here: ")
        assert says in refused["message"]
        assert await api.services.store.jobs.count_jobs([s.value for s in JobState]) == 0  # none queued


async def test_a_gpu_asset_is_refused_on_a_kubernetes_cluster_configured_without_gpus(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "carla.json").write_text(json.dumps(CARLA), encoding="utf-8")
    data_dir = tmp_path / "data"
    async with (
        fake_kube(tmp_path, f"file://{data_dir / 'files'}") as kube,
        running_api(
            data_dir,
            catalog_dir=catalog,
            workflow="kubernetes://wml-jobs?gpus=false",
            k8s_api_url=kube.api.url,
            k8s_sidecar_image=SIDECAR_IMAGE,
        ) as api,
    ):
        token = await api.consumer("alice", ("carla",))
        env = await api.upload(token, b"TOWN=Town01\n", "carla.env")

        refused = await api.create_job(token, "carla", inputs={"env": env["id"]})

        assert refused["__typename"] == "ValidationError", refused
        assert "asset 'carla' cannot run here" in refused["message"]
        assert "Kubernetes backend is configured without GPUs" in refused["message"]
        assert kube.api.state.created("jobs") == []
