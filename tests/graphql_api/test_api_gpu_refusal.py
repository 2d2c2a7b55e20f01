"""GPU requests are never ignored: createJob refuses a GPU asset on a backend that cannot give one (the
local backend; the container backend unless configured with GPUs), naming the asset and the backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.states import JobState
from tests.support.api import running_api
from tests.support.catalog import CARLA

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
