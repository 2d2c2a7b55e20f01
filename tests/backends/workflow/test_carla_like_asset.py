"""An asset like the original middle-layer's CARLA service (absolute output directory, command and args,
``gpu: true``, inputs placed at absolute paths) renders the right worker on every backend that can run it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate

from backends.storage.file import FileStorageBackend
from backends.workflow.base import JobRun
from backends.workflow.host.container.cli import container_env, gpu_args, run_args
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from backends.workflow.kubernetes.config import KubernetesOptions, options_from
from backends.workflow.kubernetes.manifests import job_manifest, job_name
from core.assets import Asset, load_asset_file
from core.backend_mapping import build_run, run_needs
from core.models import FileOrigin, FileRecord, FileStatus, InputBinding, Job
from tests.support.catalog import CARLA

COMMAND = ["/bin/bash", "-c"]
ARGS = ["./run-scenario.sh --record /home/carla/rosbag"]


def carla_asset(tmp_path: Path) -> Asset:
    path = tmp_path / "carla.json"
    path.write_text(json.dumps(CARLA), encoding="utf-8")
    return load_asset_file(path)


def carla_run(tmp_path: Path) -> JobRun:
    """The run a CARLA job is submitted as (through the same mapping the supervisor uses)."""
    asset = carla_asset(tmp_path)
    files = {
        slot.name: FileRecord(
            id=f"f_{slot.name}",
            consumer_id="c_1",
            grant_id="g_1",
            job_id=None,
            name=slot.name,
            size=10,
            sha256="a" * 64,
            content_type="application/octet-stream",
            origin=FileOrigin.UPLOAD,
            status=FileStatus.READY,
            storage_key=f"consumers/c_1/files/f_{slot.name}",
            created_at=datetime.now(UTC),
            expires_at=None,
        )
        for slot in asset.inputs
    }
    bindings = tuple(InputBinding(slot=s.name, file_id=f"f_{s.name}") for s in asset.inputs)
    job = Job.queued(job_id="j_carla", consumer_id="c_1", grant_id="g_1", asset=asset, inputs=bindings)
    return build_run(job, {f.id: f for f in files.values()})


def test_the_pod_runs_the_command_and_args_with_a_gpu_and_mounts_where_the_asset_says(tmp_path: Path) -> None:
    run = carla_run(tmp_path)

    job = job_manifest(
        run, job_name(run.job_id), "wml-jobs", KubernetesOptions(namespace="wml-jobs"), ["TOWN"]
    )

    kubernetes_validate.validate(job, "1.37.0", strict=True)
    worker = job["spec"]["template"]["spec"]["initContainers"][1]
    assert (worker["image"], worker["command"], worker["args"]) == (
        CARLA["workflow_resource"]["worker_image"],
        COMMAND,
        ARGS,
    )
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert {"name": "outputs", "mountPath": "/home/carla/rosbag"} in worker["volumeMounts"]
    placed = {m["mountPath"]: m for m in worker["volumeMounts"] if "subPath" in m}
    assert placed == {
        "/home/carla/scenarios/scenario.xosc": {
            "name": "inputs",
            "mountPath": "/home/carla/scenarios/scenario.xosc",
            "subPath": "scenario.xosc",
            "readOnly": True,
        },
        "/opt/maps": {"name": "inputs", "mountPath": "/opt/maps", "subPath": "maps", "readOnly": True},
    }
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["WML_OUTPUTS_DIR"] == "/home/carla/rosbag"
    assert env["WML_OUTPUT_ROSBAG"] == "/home/carla/rosbag/rosbag"
    assert env["WML_INPUT_SCENARIO_XOSC"] == "/home/carla/scenarios/scenario.xosc"
    assert env["WML_INPUT_MAPS"] == "/opt/maps"
    # The side-cars still see the volumes at their own places.
    stage_out = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "outputs", "mountPath": "/wml/outputs", "readOnly": True} in stage_out["volumeMounts"]


def test_the_container_runs_the_command_and_args_with_the_gpu_and_mounts_where_the_asset_says(
    tmp_path: Path,
) -> None:
    run = carla_run(tmp_path)
    devices = gpu_args(run.resources, gpus=("nvidia.com/gpu=all",), gpu_type=None)

    args = run_args(
        run,
        name="wml-x-j_carla",
        instance="x",
        env_file="/jobs/j_carla/worker.env",
        inputs="/jobs/j_carla/inputs",
        outputs="/jobs/j_carla/outputs",
        user="70000:70000",
        ulimits=(),
        network="none",
        devices=devices,
    )

    assert args[args.index("--entrypoint") :] == ["--entrypoint", json.dumps(COMMAND), run.image, *ARGS]
    volumes = [args[i + 1] for i, a in enumerate(args) if a == "--volume"]
    assert volumes == [
        "/jobs/j_carla/inputs:/wml/inputs:ro",
        "/jobs/j_carla/outputs:/home/carla/rosbag:rw",
        "/jobs/j_carla/inputs/scenario.xosc:/home/carla/scenarios/scenario.xosc:ro",
        "/jobs/j_carla/inputs/maps:/opt/maps:ro",
    ]
    assert args[args.index("--device") + 1] == "nvidia.com/gpu=all"
    env: dict[str, Any] = container_env(run, {"TOWN": "Town01"})
    assert env["WML_OUTPUT_ROSBAG"] == "/home/carla/rosbag/rosbag" and env["TOWN"] == "Town01"
    assert env["WML_INPUT_MAPS"] == "/opt/maps"


def test_the_kubernetes_backend_refuses_gpus_only_when_configured_without(tmp_path: Path) -> None:
    storage = FileStorageBackend(tmp_path / "files")
    needs = run_needs(carla_asset(tmp_path))

    assert KubernetesWorkflowBackend(KubernetesOptions(namespace="wml-jobs"), storage).refusal(needs) is None
    refused = KubernetesWorkflowBackend(KubernetesOptions(namespace="wml-jobs", gpus=False), storage).refusal(
        needs
    )
    assert refused is not None and "WML_K8S_GPUS=false" in refused
    assert options_from("kubernetes://wml-jobs?gpus=false").gpus is False
