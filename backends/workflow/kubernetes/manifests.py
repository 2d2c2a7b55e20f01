"""The Kubernetes objects the backend creates, built as plain dicts from a :class:`JobRun`.

One ``batch/v1`` Job per job; its pod runs, in order:

1. init container ``stage-in`` (side-car image): ``wml sidecar stage-in`` fetches the inputs into the
   ``inputs`` emptyDir;
2. init container ``worker`` (the asset's image, command, args, env and resources; GPUs as
   ``nvidia.com/gpu`` limits, ``gpuType`` as a node selector): sees the inputs read-only and writes the
   ``outputs`` emptyDir (at the asset's ``outputDirectory`` when it sets one; inputs the asset places at
   absolute paths are ``subPath`` mounts of the inputs volume there);
3. main container ``stage-out`` (side-car image): ``wml sidecar stage-out`` uploads the outputs and
   prints the output manifest (see :mod:`backends.workflow.kubernetes.outcome`; also its termination message).

Init containers run in order, so results are uploaded only after the worker exited 0, with no wrapper in
the worker image. The ``inputs`` and ``outputs`` volumes are emptyDirs, or (``job_volume=pvc``) directories of
one PersistentVolumeClaim per job, a generic ephemeral volume the cluster creates and deletes with the Pod.
The side-car manifests, the storage settings and the values of ``env`` inputs live in one
Secret owned by the Job (garbage-collected with it); only the side-cars mount the manifests or get the
storage credentials, the worker gets only its own env-input values. The worker's log is saved to storage
by the backend through the API (``pods/log``), since stage-out cannot read another container's stdout.

Nothing here talks to the API server.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.workflow.base import JobRun
from backends.workflow.kubernetes.config import KubernetesOptions
from sidecar.manifest import InputEntry, OutputEntry, StageInManifest, StageOutManifest

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "workflow-middlelayer"
SELECTOR = f"{MANAGED_BY}={MANAGER}"
JOB_LABEL, CONSUMER_LABEL, ASSET_LABEL = "wml/job-id", "wml/consumer-id", "wml/asset-id"
RUN_ANNOTATION = "wml/run"  # the run's ids and keys, so a restarted backend can finish it
STAGE_IN, WORKER, STAGE_OUT = "stage-in", "worker", "stage-out"
INPUTS_DIR, OUTPUTS_DIR, MANIFEST_DIR = "/wml/inputs", "/wml/outputs", "/wml/manifest"
# Both are emptyDir volumes private to the pod (a read-only root filesystem needs a writable /tmp).
SIDECAR_TMP = WORKER_TMP = "/tmp"  # noqa: S108
SIDECAR_EPHEMERAL_STORAGE = "128Mi"  # a side-car writes only into its volumes; this bounds its logs
OUTPUT_MANIFEST_PATH = f"{SIDECAR_TMP}/output-manifest.json"
DOTENV_PREFIX = "dotenv."
JOB_VOLUME = (
    "job-data"  # with job_volume=pvc: the one volume (a PVC of the Pod's own) inputs and outputs live on
)
KEEP_UNTIL_ANNOTATION = (
    "wml/keep-until"  # a failed Job kept for debugging: removed after this (epoch seconds)
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

# Every API request the backend makes, as RBAC rules (a test checks the requests of its suite against
# them). The jobs namespace needs the first four; namespace-per-consumer needs them cluster-wide (one watch
# and one list over all namespaces) and the last three as well.
RBAC_NEEDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("batch", "jobs", ("create", "delete", "get", "list", "patch")),
    ("", "pods", ("list", "watch")),
    ("", "pods/log", ("get",)),
    ("", "secrets", ("create", "delete", "list")),
    ("", "namespaces", ("create", "delete", "get", "list")),
    ("", "resourcequotas", ("create",)),
    ("networking.k8s.io", "networkpolicies", ("create",)),
)
JOBS_NAMESPACE_RBAC = RBAC_NEEDS[:4]  # what a Role in the one shared jobs namespace must grant


def dns_name(prefix: str, text: str, limit: int = 63) -> str:
    """``prefix-text`` as a DNS-1123 label; lossy conversions get a hash suffix so names stay unique."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = f"{prefix}-{cleaned}".strip("-")
    if cleaned != text.replace("_", "-") or len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = f"{name[: limit - 9].rstrip('-')}-{digest}"
    return name


def job_name(job_id: str) -> str:
    return dns_name("wml", job_id)


def label_value(text: str) -> str:
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    cleaned = re.sub(r"[^-A-Za-z0-9_.]+", "-", text)[:54].strip("-_.")
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:8]}".lstrip("-_.")


def labels(run: JobRun) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        JOB_LABEL: label_value(run.job_id),
        CONSUMER_LABEL: label_value(run.consumer_id),
        ASSET_LABEL: label_value(run.asset_id),
    }


def run_annotation(run: JobRun) -> str:
    """What finishing the run needs later (after a restart too): ids and storage keys, nothing secret."""
    outputs = [{"name": o.name, "key": o.key, "required": o.required} for o in run.outputs]
    return json.dumps({"job_id": run.job_id, "log_key": run.log_key, "outputs": outputs}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class PresignedUrls:
    """A job's own storage URLs: GET for each input, PUT for each output (key -> URL), minted at submit."""

    inputs: Mapping[str, str]
    outputs: Mapping[str, str]


def secret_manifest(
    run: JobRun,
    name: str,
    namespace: str,
    options: KubernetesOptions,
    dotenv: Mapping[str, str],
    urls: PresignedUrls | None = None,
) -> dict[str, Any]:
    """The job's Secret: the side-cars' manifests (with ``urls``, the job's presigned URLs and no storage
    settings at all; without, the storage settings), and the values of its env inputs."""
    stage_in = StageInManifest(
        inputs=[
            InputEntry(slot=i.slot, kind=str(i.kind), path=i.path, key=i.key, size=i.size, sha256=i.sha256)
            for i in run.inputs
        ],
        urls=None if urls is None else dict(urls.inputs),
    )
    stage_out = StageOutManifest(
        outputs=[OutputEntry(name=o.name, path=o.path, required=o.required, key=o.key) for o in run.outputs],
        result_path=OUTPUT_MANIFEST_PATH,
        urls=None if urls is None else dict(urls.outputs),
    )
    data = {"stage-in.json": stage_in.model_dump_json(), "stage-out.json": stage_out.model_dump_json()}
    if urls is None and options.storage_secret is None:
        data.update({"WML_STORAGE": options.storage_url or "", **options.storage_env})
    data.update({f"{DOTENV_PREFIX}{key}": value for key, value in dotenv.items()})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(run)},
        "stringData": data,
    }


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}


def job_manifest(
    run: JobRun,
    name: str,
    namespace: str,
    options: KubernetesOptions,
    dotenv_keys: list[str],
    presigned: bool = False,
) -> dict[str, Any]:
    """The Job; ``presigned``: its side-cars stage through the URLs in their manifests and get no storage
    settings (neither the job Secret's keys nor ``WML_K8S_STORAGE_SECRET``)."""
    deadline = run.run_timeout + options.deadline_allowance
    metadata = {
        "name": name,
        "namespace": namespace,
        "labels": labels(run),
        "annotations": {RUN_ANNOTATION: run_annotation(run)},
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            # The Job's deadline backs up the pod's: the pod's fires first, so its status (and log) says so.
            "activeDeadlineSeconds": deadline + 60,
            "ttlSecondsAfterFinished": options.ttl_after_finished,
            "template": {
                "metadata": {"labels": labels(run), "annotations": metadata["annotations"]},
                "spec": pod_spec(run, name, options, deadline, dotenv_keys, presigned),
            },
        },
    }


def pod_spec(
    run: JobRun,
    secret: str,
    options: KubernetesOptions,
    deadline: int,
    dotenv_keys: list[str],
    presigned: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_user,
            "fsGroup": options.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {"name": "inputs", "emptyDir": {"sizeLimit": options.inputs_size_limit}},
            {"name": "outputs", "emptyDir": {"sizeLimit": options.outputs_size_limit}},
            {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            {"name": "worker-tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {
                "name": "manifest",
                "secret": {
                    "secretName": secret,
                    "defaultMode": 0o440,
                    "items": [{"key": f, "path": f} for f in ("stage-in.json", "stage-out.json")],
                },
            },
        ],
        "initContainers": [
            _sidecar(STAGE_IN, secret, options, presigned),
            _worker(run, secret, options, dotenv_keys),
        ],
        "containers": [_sidecar(STAGE_OUT, secret, options, presigned)],
    }
    if options.job_volume == "pvc":
        _on_job_volume(spec, run, options)
    if options.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in options.image_pull_secrets]
    if options.tolerations:
        spec["tolerations"] = [dict(t) for t in options.tolerations]
    if run.resources.gpu_type:
        spec["nodeSelector"] = {options.gpu_node_label: run.resources.gpu_type}
    return spec


def _on_job_volume(spec: dict[str, Any], run: JobRun, options: KubernetesOptions) -> None:
    """Put the ``inputs`` and ``outputs`` volumes on one per-job PersistentVolumeClaim instead of emptyDirs.

    A generic ephemeral volume: the cluster creates the claim with the Pod, owned by it, and deletes it with
    it (no API permission of ours is needed). Each former volume is a directory of it (``subPath``).
    """
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": options.job_volume_size}},
    }
    if options.job_volume_storage_class:
        claim["storageClassName"] = options.job_volume_storage_class
    template = {"metadata": {"labels": labels(run)}, "spec": claim}
    spec["volumes"] = [
        {"name": JOB_VOLUME, "ephemeral": {"volumeClaimTemplate": template}},
        *(v for v in spec["volumes"] if v["name"] not in ("inputs", "outputs")),
    ]
    for container in [*spec["initContainers"], *spec["containers"]]:
        for mount in container["volumeMounts"]:
            if mount["name"] in ("inputs", "outputs"):
                mount["subPath"] = "/".join(p for p in (mount["name"], mount.get("subPath")) if p)
                mount["name"] = JOB_VOLUME


def _restricted(read_only_root: bool) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def _sidecar(step: str, secret: str, options: KubernetesOptions, presigned: bool) -> dict[str, Any]:
    root, data = (INPUTS_DIR, "inputs") if step == STAGE_IN else (OUTPUTS_DIR, "outputs")
    shared = not presigned and options.storage_secret is None  # the storage settings, from the job Secret
    keys = ["WML_STORAGE", *sorted(options.storage_env)] if shared else []
    sidecar_resources = {"cpu": options.sidecar_cpu, "memory": options.sidecar_memory}
    container: dict[str, Any] = {
        "name": step,
        "image": options.sidecar_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["wml", "sidecar", step, "--manifest", f"{MANIFEST_DIR}/{step}.json", "--root", root],
        "env": [
            {"name": "HOME", "value": SIDECAR_TMP},
            {"name": "WML_LOG_FORMAT", "value": "json"},
            *[{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}} for k in keys],
        ],
        "volumeMounts": [
            {"name": data, "mountPath": root, "readOnly": step == STAGE_OUT},
            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
            {"name": "sidecar-tmp", "mountPath": SIDECAR_TMP},
        ],
        "resources": {
            "requests": {**sidecar_resources, "ephemeral-storage": SIDECAR_EPHEMERAL_STORAGE},
            "limits": {**sidecar_resources, "ephemeral-storage": SIDECAR_EPHEMERAL_STORAGE},
        },
        "securityContext": _restricted(read_only_root=True),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if options.storage_secret is not None and not presigned:
        container["envFrom"] = [{"secretRef": {"name": options.storage_secret}}]
    return container


def _worker(run: JobRun, secret: str, options: KubernetesOptions, dotenv_keys: list[str]) -> dict[str, Any]:
    env: dict[str, dict[str, Any]] = {"HOME": {"value": WORKER_TMP}}
    env.update({key: {"value": value} for key, value in run.env.items()})
    env.update(
        {
            key: {"valueFrom": {"secretKeyRef": {"name": secret, "key": f"{DOTENV_PREFIX}{key}"}}}
            for key in dotenv_keys
        }
    )
    outputs_dir = run.output_dir or OUTPUTS_DIR
    env["WML_INPUTS_DIR"] = {"value": INPUTS_DIR}
    env["WML_OUTPUTS_DIR"] = {"value": outputs_dir}
    env.update(
        {
            f"WML_INPUT_{i.slot.upper()}": {"value": i.worker_path or f"{INPUTS_DIR}/{i.path}"}
            for i in run.inputs
        }
    )
    env.update({f"WML_OUTPUT_{o.name.upper()}": {"value": f"{outputs_dir}/{o.path}"} for o in run.outputs})
    limits = {
        "cpu": _cpu(run.resources.cpu),
        "memory": str(run.resources.memory),
        "ephemeral-storage": options.worker_ephemeral_storage,
    }
    if run.resources.gpu:
        limits["nvidia.com/gpu"] = str(run.resources.gpu)
    container: dict[str, Any] = {
        "name": WORKER,
        "image": run.image,
        "imagePullPolicy": options.image_pull_policy,
        "env": [{"name": name, **value} for name, value in env.items()],
        "volumeMounts": [
            {"name": "inputs", "mountPath": INPUTS_DIR, "readOnly": True},
            {"name": "outputs", "mountPath": outputs_dir},
            {"name": "worker-tmp", "mountPath": WORKER_TMP},
            # Inputs the asset places: the staged file or directory alone, at its absolute path.
            *[
                {"name": "inputs", "mountPath": i.worker_path, "subPath": i.path, "readOnly": True}
                for i in run.inputs
                if i.worker_path
            ],
        ],
        "resources": {
            "requests": {k: v for k, v in limits.items() if k != "nvidia.com/gpu"},
            "limits": limits,
        },
        "securityContext": _restricted(read_only_root=options.worker_read_only_root),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if run.command:
        container["command"] = list(run.command)
    if run.args:
        container["args"] = list(run.args)
    return container


def _cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def namespace_manifest(name: str, consumer_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {MANAGED_BY: MANAGER, CONSUMER_LABEL: label_value(consumer_id)}},
    }


def resource_quota_manifest(namespace: str, hard: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "wml-quota", "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
        "spec": {"hard": dict(hard)},
    }


def network_policy_manifest(namespace: str, egress_allow: list[dict[str, Any]]) -> dict[str, Any]:
    """Deny every pod of the namespace all ingress and all egress except the rules listed in settings."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "wml-default-deny", "namespace": namespace, "labels": {MANAGED_BY: MANAGER}},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress_allow,
        },
    }
