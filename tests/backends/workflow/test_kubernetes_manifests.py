"""The objects the Kubernetes backend builds: valid for a current Kubernetes, and shaped as DESIGN.md says."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import InputKind, JobRun, Resources, StagedInput, StagedOutput
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from backends.workflow.kubernetes.config import KubernetesOptions, options_from
from backends.workflow.kubernetes.manifests import (
    dns_name,
    job_manifest,
    job_name,
    label_value,
    namespace_manifest,
    network_policy_manifest,
    owner_reference,
    resource_quota_manifest,
    secret_manifest,
)
from backends.workflow.registry import WorkflowConfigurationError, create_workflow_backend
from core.settings import Settings
from tests.support.kube_state import KubeState

KUBERNETES_VERSION = "1.37.0"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

RUN = JobRun(
    job_id="j_0123456789abcdef0123456789abcdef",
    consumer_id="c_fedcba9876543210fedcba9876543210",
    asset_id="dummy-job",
    image="registry.example/wml/dummy-job:1",
    command=["/bin/sh", "/app/entrypoint.sh"],
    args=["--fast"],
    env={"SLEEPTIME": "2", "FAIL": "0"},
    resources=Resources(cpu=1.5, memory=256 * 1024 * 1024),
    inputs=(
        StagedInput("data", InputKind.FILE, "data", "consumers/c/files/f_in", 5, "a" * 64),
        StagedInput("config", InputKind.ENV, "config.env", "consumers/c/files/f_env", 9, "b" * 64),
    ),
    outputs=(StagedOutput("result", "result.txt", True, "consumers/c/files/f_out"),),
    log_key="consumers/c/files/f_log",
    run_timeout=600,
)
OPTIONS = KubernetesOptions(
    namespace="wml-jobs",
    storage_url="s3://bucket?endpoint=http://minio:9000",
    storage_env={"WML_S3_ACCESS_KEY_ID": "AKIA", "WML_S3_SECRET_ACCESS_KEY": "very-secret"},
    image_pull_secrets=("regcred",),
    image_pull_policy="Always",
    tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
)


def validate(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def containers(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = job["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*spec["initContainers"], *spec["containers"]]}


def test_the_job_and_its_secret_pass_schema_validation_for_a_current_kubernetes() -> None:
    name = job_name(RUN.job_id)
    job = job_manifest(RUN, name, "wml-jobs", OPTIONS, ["SOURCE"])
    secret = secret_manifest(RUN, name, "wml-jobs", OPTIONS, {"SOURCE": "s3://x"})
    secret["metadata"]["ownerReferences"] = [
        owner_reference({**job, "metadata": {**job["metadata"], "uid": "u"}})
    ]

    validate(job)
    validate(secret)
    for obj in (
        namespace_manifest("wml-jobs-c-1", RUN.consumer_id),
        resource_quota_manifest("wml-jobs-c-1", {"pods": "20", "limits.memory": "64Gi"}),
        network_policy_manifest("wml-jobs-c-1", [{"ports": [{"protocol": "UDP", "port": 53}]}]),
    ):
        validate(obj)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**job, "spec": {**job["spec"], "backoffLimit": "none"}})


def test_the_pod_runs_stage_in_then_the_worker_as_init_containers_and_stage_out_last() -> None:
    job = job_manifest(RUN, job_name(RUN.job_id), "wml-jobs", OPTIONS, [])
    spec = job["spec"]["template"]["spec"]

    assert [c["name"] for c in spec["initContainers"]] == ["stage-in", "worker"]
    assert [c["name"] for c in spec["containers"]] == ["stage-out"]
    stage_in, worker, stage_out = (containers(job)[n] for n in ("stage-in", "worker", "stage-out"))
    assert stage_in["command"] == [
        "wml", "sidecar", "stage-in", "--manifest", "/wml/manifest/stage-in.json", "--root", "/wml/inputs",
    ]  # fmt: skip
    assert stage_out["command"][:3] == ["wml", "sidecar", "stage-out"]
    assert stage_in["image"] == stage_out["image"] == OPTIONS.sidecar_image
    assert (worker["image"], worker["command"], worker["args"]) == (RUN.image, list(RUN.command), ["--fast"])
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["SLEEPTIME"] == "2"
    assert env["WML_INPUT_DATA"] == "/wml/inputs/data"
    assert env["WML_OUTPUT_RESULT"] == "/wml/outputs/result.txt"
    assert worker["resources"]["limits"] == {
        "cpu": "1500m",
        "memory": str(256 * 1024 * 1024),
        "ephemeral-storage": OPTIONS.worker_ephemeral_storage,
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["inputs"]["emptyDir"]["sizeLimit"] == OPTIONS.inputs_size_limit
    assert volumes["outputs"]["emptyDir"]["sizeLimit"] == OPTIONS.outputs_size_limit
    mounts = {
        n: {m["name"]: m.get("readOnly", False) for m in c["volumeMounts"]}
        for n, c in containers(job).items()
    }
    assert mounts["worker"]["inputs"] is True and mounts["worker"]["outputs"] is False
    assert mounts["stage-out"]["outputs"] is True and mounts["stage-in"]["inputs"] is False


def test_the_job_is_locked_down_and_labelled() -> None:
    job = job_manifest(RUN, job_name(RUN.job_id), "wml-jobs", OPTIONS, [])
    spec, pod = job["spec"], job["spec"]["template"]["spec"]

    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == OPTIONS.ttl_after_finished
    assert pod["activeDeadlineSeconds"] == RUN.run_timeout + OPTIONS.deadline_allowance
    assert spec["activeDeadlineSeconds"] > pod["activeDeadlineSeconds"]  # the Pod's fires first
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"] == [dict(OPTIONS.tolerations[0])]
    for container in containers(job).values():
        assert container["imagePullPolicy"] == "Always"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Every container: a read-only root (the worker writes /tmp, an emptyDir) and bounded ephemeral storage.
    for container in containers(job).values():
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        for bound in ("requests", "limits"):
            assert container["resources"][bound]["ephemeral-storage"], (container["name"], bound)
    worker = containers(job)["worker"]
    assert {"name": "worker-tmp", "mountPath": "/tmp"} in worker["volumeMounts"]
    assert worker["resources"]["limits"]["ephemeral-storage"] == OPTIONS.worker_ephemeral_storage
    labels = {
        "app.kubernetes.io/managed-by": "workflow-middlelayer",
        "wml/job-id": RUN.job_id,
        "wml/consumer-id": RUN.consumer_id,
        "wml/asset-id": RUN.asset_id,
    }
    assert job["metadata"]["labels"] == labels
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert DNS_LABEL.fullmatch(job["metadata"]["name"])


def test_storage_credentials_reach_only_the_side_cars_and_env_inputs_only_the_worker() -> None:
    name = job_name(RUN.job_id)
    job = job_manifest(RUN, name, "wml-jobs", OPTIONS, ["SOURCE"])
    secret = secret_manifest(RUN, name, "wml-jobs", OPTIONS, {"SOURCE": "s3://in"})
    data = secret["stringData"]

    assert data["WML_S3_SECRET_ACCESS_KEY"] == "very-secret"
    assert json.loads(data["stage-out.json"])["outputs"][0]["key"] == "consumers/c/files/f_out"
    assert json.loads(data["stage-in.json"])["inputs"][0]["sha256"] == "a" * 64
    refs = {
        n: {e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e}
        for n, c in containers(job).items()
    }
    assert (
        refs["stage-in"]
        == refs["stage-out"]
        == {"WML_STORAGE", "WML_S3_ACCESS_KEY_ID", "WML_S3_SECRET_ACCESS_KEY"}
    )
    assert refs["worker"] == {"dotenv.SOURCE"}
    assert "manifest" not in {m["name"] for m in containers(job)["worker"]["volumeMounts"]}
    assert "very-secret" not in json.dumps(job)


def test_an_existing_storage_secret_is_referenced_instead_of_copied() -> None:
    options = replace(OPTIONS, storage_secret="wml-storage")
    job = job_manifest(RUN, "wml-x", "wml-jobs", options, [])
    secret = secret_manifest(RUN, "wml-x", "wml-jobs", options, {})

    assert set(secret["stringData"]) == {"stage-in.json", "stage-out.json"}
    assert containers(job)["stage-in"]["envFrom"] == [{"secretRef": {"name": "wml-storage"}}]
    assert "envFrom" not in containers(job)["worker"]


def test_a_gpu_asset_gets_gpu_limits_and_its_gpu_type_as_node_selector() -> None:
    gpu = replace(
        RUN, resources=Resources(cpu=4, memory=8 * 1024**3, gpu=2, gpu_type="NVIDIA-A100-SXM4-80GB")
    )
    job = job_manifest(gpu, "wml-gpu", "wml-jobs", OPTIONS, [])
    validate(job)

    worker = containers(job)["worker"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in worker["resources"]["requests"]
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"
    }
    plain = job_manifest(RUN, "wml-cpu", "wml-jobs", OPTIONS, [])
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in containers(plain)["worker"]["resources"]["limits"]


@pytest.mark.parametrize(
    "job_id", ["j_0123456789abcdef0123456789abcdef", "job-1", "Weird_ID.with/chars", "x" * 80]
)
def test_names_and_label_values_are_always_valid(job_id: str) -> None:
    name = job_name(job_id)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63
    value = label_value(job_id)
    assert len(value) <= 63 and re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", value)
    assert dns_name("wml-jobs", "c_" + "f" * 32) == "wml-jobs-c-" + "f" * 32


def test_options_come_from_the_settings_and_the_url_query() -> None:
    settings = Settings(
        k8s_api_url="http://127.0.0.1:8001",
        k8s_sidecar_image="registry.example/wml/sidecar:2",
        k8s_tolerations='[{"key": "batch", "operator": "Exists"}]',
        k8s_image_pull_secrets="a, b",
        k8s_namespace_per_consumer=True,
        storage="s3://bucket?region=eu-1",
        s3_access_key_id="AKIA",
        s3_secret_access_key="shh",
    )
    options = options_from("kubernetes://jobs?deadline_allowance=0&watch_timeout=30", settings)

    assert (options.namespace, options.connection.api_url) == ("jobs", "http://127.0.0.1:8001")
    assert (options.deadline_allowance, options.watch_timeout) == (0, 30)
    assert options.sidecar_image == "registry.example/wml/sidecar:2"
    assert options.image_pull_secrets == ("a", "b")
    assert options.tolerations == ({"key": "batch", "operator": "Exists"},)
    assert options.namespace_per_consumer is True
    assert options.storage_url == "s3://bucket?region=eu-1"
    assert options.storage_env == {"WML_S3_ACCESS_KEY_ID": "AKIA", "WML_S3_SECRET_ACCESS_KEY": "shh"}
    assert "shh" not in repr(options)


def test_the_registry_builds_the_kubernetes_backend_from_the_url_and_settings(tmp_path: Path) -> None:
    settings = Settings(k8s_api_url="http://127.0.0.1:9", k8s_ttl_after_finished=60)
    backend = create_workflow_backend(
        "kubernetes://team-a", storage=FileStorageBackend(tmp_path), work_dir=tmp_path, settings=settings
    )
    assert isinstance(backend, KubernetesWorkflowBackend)
    assert (backend.options.namespace, backend.options.ttl_after_finished) == ("team-a", 60)
    for url in (
        "kubernetes://Bad_NS",
        "kubernetes://ns/path",
        "kubernetes://ns?colour=red",
        "kubernetes://ns?burst=x",
    ):
        with pytest.raises(WorkflowConfigurationError, match="invalid kubernetes workflow URL"):
            create_workflow_backend(url, storage=FileStorageBackend(tmp_path), work_dir=tmp_path)


async def test_secret_values_are_base64_in_the_fake_api_like_the_real_one() -> None:
    # Guards the test double the other tests rely on: stringData is folded into data on create.
    state = KubeState()
    state.create("namespaces", None, {"metadata": {"name": "ns"}})
    secret = state.create("secrets", "ns", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})

    assert secret["data"] == {"k": base64.b64encode(b"v").decode()} and "stringData" not in secret
