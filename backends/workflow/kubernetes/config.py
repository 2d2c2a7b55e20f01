"""What the Kubernetes workflow backend is configured with: the ``kubernetes://`` URL plus ``WML_K8S_*``.

``kubernetes://NAMESPACE[?option=value&...]``: NAMESPACE is where jobs run (with namespace-per-consumer,
the prefix of each consumer's namespace). The settings (``core.settings.Settings``, passed in by the entry
point) give every option its value; the URL query may override the plain ones by their name without the
``k8s_`` prefix (``?deadline_allowance=0&watch_timeout=30``), which tests and quick experiments use.
Connection details (API URL, token, kubeconfig) come from the settings only: the URL is logged.

No kubernetes_asyncio here: this module is plain values, shared by the manifest builder and the adapter.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# Options the URL query may set (scalars only; connection details and JSON lists stay in the settings).
_URL_OPTIONS = (
    "sidecar_image",
    "image_pull_policy",
    "ttl_after_finished",
    "namespace_per_consumer",
    "requests_per_second",
    "burst",
    "retries",
    "retry_max_delay",
    "request_timeout",
    "watch_timeout",
    "deadline_allowance",
    "orphan_grace",
    "inputs_size_limit",
    "outputs_size_limit",
    "log_tail_lines",
    "worker_read_only_root",
    "worker_ephemeral_storage",
    "job_volume",
    "job_volume_size",
    "job_volume_storage_class",
    "keep_failed_for",
    "gpus",
)
JOB_VOLUMES = ("emptyDir", "pvc")


@dataclass(frozen=True, slots=True)
class Connection:
    """How to reach the API server; the token never shows in a repr."""

    api_url: str | None = None  # e.g. http://127.0.0.1:8001 (kubectl proxy) or https://...
    token: str | None = field(default=None, repr=False)
    kubeconfig: str | None = None
    context: str | None = None
    verify_ssl: bool = True


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    namespace: str = "default"
    connection: Connection = Connection()
    sidecar_image: str = "localhost/wml/sidecar:0.1.0"
    image_pull_secrets: tuple[str, ...] = ()
    image_pull_policy: str = "IfNotPresent"
    tolerations: tuple[dict[str, Any], ...] = ()
    gpus: bool = True  # the nodes offer nvidia.com/gpu; False: GPU jobs are refused at createJob
    gpu_node_label: str = "nvidia.com/gpu.product"
    ttl_after_finished: int = 3600
    namespace_per_consumer: bool = False
    namespace_quota: dict[str, str] = field(default_factory=dict)
    egress_allow: tuple[dict[str, Any], ...] = ()
    requests_per_second: float = 20.0
    burst: int = 40
    retries: int = 5
    retry_max_delay: float = 10.0
    request_timeout: float = 30.0
    watch_timeout: int = 290  # the server ends each watch after this; we resume from resourceVersion
    deadline_allowance: int = 600  # seconds for pulls and staging on top of the run timeout
    orphan_grace: int = 300  # labelled objects younger than this are never swept
    inputs_size_limit: str = "10Gi"
    outputs_size_limit: str = "10Gi"
    job_volume: str = "emptyDir"  # or "pvc": one generic ephemeral volume (a PVC owned by the Pod) per job
    job_volume_size: str = "20Gi"
    job_volume_storage_class: str | None = None  # None: the cluster's default StorageClass
    keep_failed_for: int = 0  # seconds a failed job's Job and Pod are kept for debugging
    sidecar_cpu: str = "500m"
    sidecar_memory: str = "256Mi"
    run_as_user: int = 65534
    worker_read_only_root: bool = True
    worker_ephemeral_storage: str = "2Gi"
    log_tail_lines: int = 50
    storage_url: str | None = None  # WML_STORAGE as the side-car sees it
    storage_env: dict[str, str] = field(default_factory=dict, repr=False)  # credentials for the side-car
    storage_secret: str | None = None  # an existing Secret env'd into the side-cars instead

    def __post_init__(self) -> None:
        if not _DNS_LABEL.fullmatch(self.namespace) or len(self.namespace) > 63:
            raise ValueError(f"{self.namespace!r} is not a valid namespace name")
        if self.job_volume not in JOB_VOLUMES:
            raise ValueError(f"job_volume must be one of {', '.join(JOB_VOLUMES)}")
        if self.keep_failed_for < 0:
            raise ValueError("keep_failed_for must not be negative")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise ValueError(f"image_pull_policy must be one of {', '.join(_PULL_POLICIES)}")
        if self.requests_per_second <= 0 or self.burst < 1 or self.retries < 0:
            raise ValueError("requests_per_second and burst must be positive, retries not negative")
        if self.watch_timeout < 1 or self.deadline_allowance < 0 or self.orphan_grace < 0:
            raise ValueError(
                "watch_timeout must be positive, deadline_allowance and orphan_grace not negative"
            )


def options_from(url: str, settings: Any = None) -> KubernetesOptions:
    """The options for ``url``, from ``settings`` (the service's, see :func:`_from_settings`) then the URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "kubernetes":
        raise ValueError("not a kubernetes:// URL")
    if "@" in parts.netloc or parts.path.strip("/") or parts.fragment:
        raise ValueError("use kubernetes://NAMESPACE?option=value (no credentials, path or fragment)")
    base = _from_settings(settings) if settings is not None else KubernetesOptions()
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_URL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown kubernetes workflow options: {', '.join(unknown)}")
    types = {f.name: f.type for f in fields(KubernetesOptions)}
    updates: dict[str, Any] = {name: _convert(name, value, str(types[name])) for name, value in query.items()}
    return replace(base, namespace=parts.netloc or base.namespace, **updates)


def _convert(name: str, value: str, type_name: str) -> Any:
    try:
        if type_name == "bool":
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if type_name == "int":
            return int(value)
        if type_name == "float":
            return float(value)
    except ValueError:
        raise ValueError(f"option {name} must be a {type_name}") from None
    return value


def _from_settings(settings: Any) -> KubernetesOptions:
    """From the service's settings: ``settings.kubernetes`` (``core.settings.KubernetesSettings``; this
    layer cannot import core, so it is read by attribute), the storage URL and the S3 credentials."""
    k = settings.kubernetes
    connection = Connection(
        api_url=k.api_url,
        token=None if k.token is None else k.token.get_secret_value(),
        kubeconfig=None if k.kubeconfig is None else str(k.kubeconfig),
        context=k.context,
        verify_ssl=k.verify_ssl,
    )
    credentials = settings.storage_credentials()
    storage_env = {}
    if credentials is not None:
        storage_env = {
            "WML_S3_ACCESS_KEY_ID": credentials.access_key_id,
            "WML_S3_SECRET_ACCESS_KEY": credentials.secret_access_key,
        }
    same_names = k.model_dump(exclude=_CONVERTED)  # every other setting is the option of its name
    return KubernetesOptions(
        **same_names,
        connection=connection,
        image_pull_secrets=tuple(_names(k.image_pull_secrets)),
        tolerations=tuple(_json_list(k.tolerations, "WML_K8S_TOLERATIONS")),
        namespace_quota=_json_quota(k.namespace_quota),
        egress_allow=tuple(_json_list(k.egress_allow, "WML_K8S_EGRESS_ALLOW")),
        storage_url=k.storage_url or settings.resolved_storage_url(),
        storage_env=storage_env,
        storage_secret=k.storage_secret,
        log_tail_lines=settings.log_tail_lines,
    )


# Settings that are not options of the same name and type: the connection, and lists given as text.
_CONVERTED = {
    "api_url",
    "token",
    "kubeconfig",
    "context",
    "verify_ssl",
    "image_pull_secrets",
    "tolerations",
    "namespace_quota",
    "egress_allow",
    "storage_url",
    "storage_secret",
}


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _json_list(text: str | None, setting: str) -> list[dict[str, Any]]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{setting} is not valid JSON") from None
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{setting} must be a JSON list of objects")
    return value


def _json_quota(text: str | None) -> dict[str, str]:
    if not text:
        return {"pods": "20", "requests.cpu": "16", "requests.memory": "64Gi", "limits.memory": "64Gi"}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("WML_K8S_NAMESPACE_QUOTA is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError("WML_K8S_NAMESPACE_QUOTA must be a JSON object of resource -> quantity")
    return {str(k): str(v) for k, v in value.items()}
