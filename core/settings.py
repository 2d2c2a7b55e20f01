"""Settings: every knob of the service, read once from ``WML_*`` environment variables.

Built once by the entry point and passed down; nothing else reads the environment. The embedded default
(SQLite + local disk + local processes, everything under ``WML_DATA_DIR``) needs no variable at all.

The settings of one concern form a nested model: ``settings.kubernetes`` (the Kubernetes workflow
backend), ``settings.edc`` (provisioning through the connector), ``settings.s3`` (S3 credentials),
``settings.local`` (the local backend's sandbox). Each
nested setting is read from ``WML_<CONCERN>__<NAME>`` (``WML_KUBERNETES__API_URL``) and from the flat name
deployments have always set (``WML_K8S_API_URL``), listed once in :data:`FLAT_NAMES`; when both are set
the nested form wins. Keyword arguments take both forms too (``Settings(k8s_api_url=...)``) and win over
any variable.

At ~450 lines this is the one list of every setting with its default and description (the README's
table is checked against it); split up, that list would have to be read in several places.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from backends.storage.base import StorageCredentials
from core.origins import Origin, parse_origins

# Database URL schemes without a driver, and the async driver this service installs for each.
ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}
MIN_SECRET_KEY = 32  # bytes: the signing key is an HMAC-SHA256 key
_SECRET_FILES = ("secret.key", "admin-token")  # generated into the data directory when not set
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_catalog() -> Path:
    return _PROJECT_ROOT / "assets"


class KubernetesSettings(BaseModel):
    """The Kubernetes workflow backend (``WML_WORKFLOW=kubernetes://NAMESPACE``): ``WML_K8S_*``."""

    model_config = ConfigDict(frozen=True)

    api_url: str | None = Field(
        default=None,
        description="Kubernetes API server URL (e.g. http://127.0.0.1:8001 behind kubectl proxy); default: "
        "the in-cluster service account, else the kubeconfig.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token sent to WML_K8S_API_URL (unset: no Authorization header)."
    )
    verify_ssl: bool = Field(default=True, description="Verify the TLS certificate of WML_K8S_API_URL.")
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig file to use instead of the in-cluster service account."
    )
    context: str | None = Field(default=None, description="Kubeconfig context (default: the current one).")
    sidecar_image: str = Field(
        default="localhost/wml/sidecar:0.1.0",
        description="Side-car image of the stage-in and stage-out containers (runs `wml sidecar ...`).",
    )
    image_pull_secrets: str = Field(
        default="", description="Comma-separated names of image pull Secrets given to every job pod."
    )
    image_pull_policy: str = Field(
        default="IfNotPresent",
        pattern="^(Always|IfNotPresent|Never)$",
        description="imagePullPolicy of every container of a job pod (Always, IfNotPresent, Never).",
    )
    tolerations: str = Field(
        default="",
        description="Tolerations of every job pod, as a JSON list of Kubernetes Toleration objects.",
    )
    gpus: bool = Field(
        default=True,
        description="The cluster's nodes offer GPUs (nvidia.com/gpu); false refuses assets that need a GPU "
        "at createJob instead of leaving their pods pending until the start timeout.",
    )
    gpu_node_label: str = Field(
        default="nvidia.com/gpu.product",
        description="Node label an asset's gpuType is matched against (nodeSelector) for GPU jobs.",
    )
    ttl_after_finished: int = Field(
        default=3600,
        ge=0,
        description="ttlSecondsAfterFinished of each Job: Kubernetes removes a finished Job after this, "
        "should the service not have cleaned it up.",
    )
    deadline_allowance: int = Field(
        default=600,
        ge=0,
        description="Seconds added to an asset's run timeout for a job pod's activeDeadlineSeconds "
        "(image pulls and staging count against that deadline too).",
    )
    namespace_per_consumer: bool = Field(
        default=False,
        description="Run each consumer's jobs in its own namespace NAMESPACE-<consumer> (created with a "
        "ResourceQuota and a default-deny NetworkPolicy, deleted when no job is left) instead of NAMESPACE.",
    )
    namespace_quota: str = Field(
        default="",
        description="ResourceQuota `hard` limits of each consumer namespace, a JSON object (default: "
        '{"pods": "20", "requests.cpu": "16", "requests.memory": "64Gi", "limits.memory": "64Gi"}).',
    )
    egress_allow: str = Field(
        default="",
        description="Egress rules (JSON list of NetworkPolicyEgressRule) the default-deny policy of a "
        "consumer namespace still allows: the storage endpoint and DNS, typically.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Storage URL as the side-car in a pod sees it (default: WML_STORAGE); e.g. another "
        "endpoint host inside the cluster.",
    )
    storage_secret: str | None = Field(
        default=None,
        description="Existing Secret (WML_STORAGE, WML_S3_* keys) given to the side-cars as environment, "
        "instead of copying the storage settings into each job's own Secret.",
    )
    inputs_size_limit: str = Field(
        default="10Gi", description="sizeLimit of the emptyDir volume a job's inputs are staged into."
    )
    outputs_size_limit: str = Field(
        default="10Gi", description="sizeLimit of the emptyDir volume a job's worker writes its outputs to."
    )
    job_volume: Literal["emptyDir", "pvc"] = Field(
        default="emptyDir",
        description="Where a job's inputs and outputs live: emptyDir volumes on the node (sized by "
        "WML_K8S_INPUTS_SIZE_LIMIT and WML_K8S_OUTPUTS_SIZE_LIMIT), or pvc: one PersistentVolumeClaim per "
        "job (a generic ephemeral volume: created with the job's Pod, owned by it and deleted with it), for "
        "workers that need more than a node's ephemeral storage.",
    )
    job_volume_size: str = Field(
        default="20Gi", description="Size of each job's PersistentVolumeClaim (WML_K8S_JOB_VOLUME=pvc)."
    )
    job_volume_storage_class: str | None = Field(
        default=None,
        description="StorageClass of each job's PersistentVolumeClaim (WML_K8S_JOB_VOLUME=pvc); unset: the "
        "cluster's default class.",
    )
    keep_failed_for: int = Field(
        default=0,
        ge=0,
        description="Seconds a failed job's Kubernetes Job and Pod stay in the cluster after it ended, for "
        "debugging (kubectl describe, kubectl logs); 0 removes them at once, as every other job's.",
    )
    sidecar_cpu: str = Field(default="500m", description="CPU request and limit of each side-car container.")
    sidecar_memory: str = Field(
        default="256Mi", description="Memory request and limit of each side-car container."
    )
    run_as_user: int = Field(
        default=65534, ge=1, description="Non-root user (and group) every container of a job pod runs as."
    )
    worker_read_only_root: bool = Field(
        default=True,
        description="Give the worker container a read-only root filesystem (it still gets a writable /tmp); "
        "false only for images that must write elsewhere.",
    )
    worker_ephemeral_storage: str = Field(
        default="2Gi",
        description="ephemeral-storage request and limit of the worker container (its writable layer and "
        "logs; the emptyDir volumes have their own sizeLimits).",
    )
    requests_per_second: float = Field(
        default=20.0, gt=0, description="Average Kubernetes API requests per second the service may make."
    )
    burst: int = Field(default=40, gt=0, description="Kubernetes API requests the service may make at once.")
    retries: int = Field(
        default=5,
        ge=0,
        description="Retries of a Kubernetes API request that failed transiently (5xx, 429, network).",
    )
    retry_max_delay: float = Field(
        default=10.0,
        gt=0,
        description="Longest pause, in seconds, between retries of a Kubernetes API request.",
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a Kubernetes API request may take."
    )
    watch_timeout: int = Field(
        default=290,
        gt=0,
        description="Seconds after which the server ends each Pod watch (timeoutSeconds); it is then resumed "
        "from its resourceVersion.",
    )
    orphan_grace: int = Field(
        default=300,
        ge=0,
        description="Labelled Jobs and Secrets younger than this many seconds are never removed as orphans.",
    )


class EdcSettings(BaseModel):
    """Provisioning through an EDC connector: its key, our secret, grants and callbacks."""

    model_config = ConfigDict(frozen=True)

    api_key: SecretStr | None = Field(
        default=None,
        description="The connector's management API key, sent as X-Api-Key with every provisioning callback.",
    )
    management_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s?#]+$",
        description="The connector's management API (e.g. http://provider-edc:8181/management), read with "
        "WML_EDC_API_KEY to find the participant of a transfer whose request names none (milestone-8 without "
        "an assignee, the 0.16 data plane): one participant then keeps one consumer. Unset: such a transfer "
        "is its own consumer.",
    )
    provision_secret: SecretStr | None = Field(
        default=None,
        description="Secret the connector sends with every POST /provision (X-Provision-Secret header or "
        "?secret=...). Unset: provisioning is off and /provision answers 503.",
    )
    callback_origins: str = Field(
        default="",
        description="Comma-separated scheme://host[:port] origins provisioning callbacks may go to (the "
        "connector's management API). A request with a callbackAddress elsewhere is refused; unset: "
        "provisioning is off.",
    )
    max_concurrent_callbacks: int = Field(
        default=16, gt=0, description="Provisioning callbacks sent at once (a slow connector holds one)."
    )
    grant_lifetime: int = Field(
        default=30 * 86400,
        gt=0,
        description="Seconds a provisioned grant lasts when its policy sets no end date.",
    )
    deprovision_retention: str = Field(
        default="delete",
        pattern="^(delete|keep)$",
        description="What deprovisioning does with the grant's files: delete (default) or keep.",
    )
    callback_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for the connector's answer to a callback."
    )
    callback_max_delay: float = Field(
        default=60.0, gt=0, description="Longest pause between retries of a failed provisioning callback."
    )
    callback_unauthorized_delay: float = Field(
        default=300.0, gt=0, description="Pause between retries while the connector refuses our key (401)."
    )
    callback_give_up_after: float = Field(
        default=86400.0, gt=0, description="Seconds after which a callback that keeps failing is abandoned."
    )
    reaper_interval: float = Field(
        default=30.0, gt=0, description="Seconds between checks for expired grants and files to remove."
    )

    @field_validator("callback_origins")
    @classmethod
    def _origins_parse(cls, value: str) -> str:
        parse_origins(value)  # a bad entry stops the start, named
        return value

    def origins(self) -> frozenset[Origin]:
        return parse_origins(self.callback_origins)


class S3Settings(BaseModel):
    """Explicit credentials for ``s3://`` storage: ``WML_S3_*``."""

    model_config = ConfigDict(frozen=True)

    access_key_id: str | None = Field(
        default=None,
        description="Access key id for s3:// storage; with neither S3 key set, the standard AWS chain "
        "(AWS_* variables, shared config, instance and pod roles) is used.",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key for s3:// storage (set together with the key id)."
    )

    @model_validator(mode="after")
    def _keys_come_in_pairs(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both WML_S3_ACCESS_KEY_ID and WML_S3_SECRET_ACCESS_KEY, or neither")
        return self


class LocalSettings(BaseModel):
    """The local workflow backend's sandbox (``WML_LOCAL_*``; :mod:`backends.workflow.host.local.sandbox`)."""

    model_config = ConfigDict(frozen=True)

    sandbox: Literal["on", "off"] = Field(
        default="on",
        description="Run each local worker in a bubblewrap sandbox (on; local:// refuses to start without "
        "bwrap) or unconfined as the server's user (off: development only, logged as a warning at start).",
    )
    sandbox_uid: int = Field(
        default=1_000_000_000,
        ge=1,
        le=2**32 - 65536 - 2,
        description="First of the 65536 uids (and gids) sandboxed local workers run as when the server runs "
        "as root: each job gets its own, this plus a hash of its id.",
    )
    max_processes: int = Field(
        default=1024,
        gt=0,
        description="RLIMIT_NPROC of a sandboxed local worker (processes and threads of its uid; applied "
        "only when the server runs as root, where each job has a uid of its own).",
    )
    max_file_size: int = Field(
        default=16 * 1024**3,
        gt=0,
        description="RLIMIT_FSIZE of a local worker: the largest file it may write.",
    )
    max_log_size: int = Field(
        default=64 * 1024**2,
        gt=0,
        description="Bytes of a local worker's output kept in its log; the rest is dropped (a line says so).",
    )


_EDC_FLAT = {
    "api_key": "edc_api_key",
    "callback_origins": "edc_callback_origins",
    "max_concurrent_callbacks": "edc_max_concurrent_callbacks",
    "management_url": "edc_management_url",
}
# The flat names deployments set, for each nested setting: WML_K8S_API_URL -> settings.kubernetes.api_url.
FLAT_NAMES: dict[str, tuple[str, str]] = {
    **{f"k8s_{name}": ("kubernetes", name) for name in KubernetesSettings.model_fields},
    **{_EDC_FLAT.get(name, name): ("edc", name) for name in EdcSettings.model_fields},
    **{f"s3_{name}": ("s3", name) for name in S3Settings.model_fields},
    **{f"local_{name}": ("local", name) for name in LocalSettings.model_fields},
}


class _FlatEnvironment(PydanticBaseSettingsSource):
    """The flat ``WML_*`` variables of nested settings, as flat keys that ``Settings`` then nests."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the variables itself

    def __call__(self) -> dict[str, Any]:
        environ = {key.upper(): value for key, value in os.environ.items()}
        return {
            flat: environ[f"WML_{flat.upper()}"] for flat in FLAT_NAMES if f"WML_{flat.upper()}" in environ
        }


class _NestedInit(PydanticBaseSettingsSource):
    """The keyword arguments with their flat names nested first: ``Settings(k8s_api_url=...)`` then beats
    ``WML_KUBERNETES__API_URL`` from the environment, as a keyword beats any variable."""

    def __init__(self, settings_cls: type[BaseSettings], keywords: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._keywords = keywords

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ gives the keywords

    def __call__(self) -> dict[str, Any]:
        nested: dict[str, Any] = _nested(self._keywords())
        return nested


def setting_name(loc: tuple[int | str, ...]) -> str:
    """The variable a user sets for the setting at ``loc`` of a validation error (``WML_K8S_BURST``)."""
    if not loc:
        return "settings"
    path = tuple(str(part) for part in loc)
    for flat, nested in FLAT_NAMES.items():
        if path[:2] == nested:
            return f"WML_{flat.upper()}"
    if path[0] in FLAT_NAMES:
        return f"WML_{path[0].upper()}"
    return "WML_" + "__".join(path).upper() if path[0] in NESTED else "WML_" + path[0].upper()


NESTED = ("kubernetes", "edc", "s3", "local")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WML_", env_nested_delimiter="__", extra="ignore")

    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings, description="The Kubernetes workflow backend (WML_K8S_*)."
    )
    edc: EdcSettings = Field(
        default_factory=EdcSettings, description="Provisioning through an EDC connector (WML_EDC_*, ...)."
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="Credentials for s3:// storage.")
    local: LocalSettings = Field(
        default_factory=LocalSettings, description="The local backend's sandbox (WML_LOCAL_*)."
    )

    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "wml",
        description="Where the embedded default keeps its database, files and job directories.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API server listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API server listens on.")
    public_url: str | None = Field(
        default=None,
        description="The URL consumers reach the API at (for download links); default http://HOST:PORT.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Operator token for admin queries; when unset, one is generated into "
        "DATA_DIR/admin-token.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key that signs download/upload URLs and derives provisioned tokens, at least 32 "
        "bytes (a shorter one stops the start); when unset, one is generated into DATA_DIR/secret.key.",
    )
    database_url: str | None = Field(
        default=None,
        description="Database URL (postgresql://user:pass@host/db, or sqlite:///path; without a driver the "
        "installed async one is used: asyncpg, aiosqlite); default: SQLite in DATA_DIR.",
    )
    storage: str | None = Field(
        default=None,
        description="Storage backend URL (file:///path, s3://bucket?...); default: DATA_DIR/files.",
    )
    workflow: str = Field(
        default="local://",
        description=(
            "Workflow backend URL (local://, kubernetes://NAMESPACE, container://podman, container://docker;"
            " the container backend's options are URL query parameters, see the README)."
        ),
    )
    catalog_dir: Path = Field(
        default_factory=_default_catalog, description="Directory of asset YAML files synced at start."
    )
    max_upload_size: int = Field(
        default=5 * 1024**3,
        gt=0,
        description="Largest file a consumer may upload, in bytes (also capped by "
        "the largest input slot of the assets the token grants).",
    )
    max_running_jobs_per_consumer: int = Field(
        default=4, gt=0, description="Jobs of one consumer running at once; more wait in QUEUED."
    )
    max_queued_jobs_per_consumer: int = Field(
        default=100, gt=0, description="Non-terminal jobs one consumer may have; createJob beyond is refused."
    )
    backend_capacity: int = Field(
        default=8, gt=0, description="Jobs the workflow backend runs at once; more wait in QUEUED."
    )
    cancel_timeout: int = Field(
        default=60, gt=0, description="Seconds a job may stay CANCELING before it is forced to CANCELED."
    )
    reconcile_interval: float = Field(
        default=30.0, gt=0, description="Seconds between reconciliations of live jobs with the backend."
    )
    tick_interval: float = Field(
        default=1.0, gt=0, description="Seconds between the supervisor's deadline and scheduling checks."
    )
    url_ttl: int = Field(
        default=900, gt=0, description="Seconds a signed download or upload URL stays valid."
    )
    pending_upload_ttl: int = Field(
        default=86400, gt=0, description="Seconds an announced upload (createUpload) may stay incomplete."
    )
    max_stored_bytes_per_consumer: int = Field(
        default=100 * 1024**3,
        gt=0,
        description="Bytes a consumer may keep stored: its uploads, the outputs and logs of its jobs, and "
        "the announced size of its pending uploads; an upload beyond it is refused (QUOTA_EXCEEDED).",
    )
    max_pending_uploads_per_consumer: int = Field(
        default=16,
        gt=0,
        description="Announced uploads (createUpload) a consumer may have incomplete at once.",
    )
    replica_id: str | None = Field(
        default=None,
        max_length=100,
        description="This process's id among the service's replicas; default: <host name>-<digest of the "
        "data directory>, the same across restarts of one process on one machine (a restarted replica takes "
        "its own jobs back).",
    )
    replica_lease: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a replica's heartbeat is valid (it renews it every third of that); a replica "
        "silent for longer is presumed dead.",
    )
    replica_grace: float = Field(
        default=120.0,
        ge=0,
        description="Seconds after a dead replica's lease ran out before the jobs it ran on a host-bound "
        "backend (local, container) end SYSTEM_ERROR/BACKEND_LOST; a Kubernetes job is taken over at once.",
    )
    retention_days: int = Field(
        default=30,
        ge=0,
        description="Days a finished job (with its outputs, log and events) is kept after it ended; then it "
        "is deleted. 0 keeps finished jobs until the consumer deletes them or the contract ends.",
    )
    log_tail_lines: int = Field(default=50, gt=0, description="Lines of worker log kept on the job.")
    max_request_body: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Largest GraphQL request body (JSON), in bytes; a larger one, announced or streamed, is "
        "answered 413 as soon as the limit is crossed, before authentication and without buffering it. "
        "Uploads have their own limit (WML_MAX_UPLOAD_SIZE), /provision bodies theirs (64 KiB).",
    )
    max_query_depth: int = Field(default=10, gt=0, description="Deepest GraphQL query accepted.")
    max_query_tokens: int = Field(
        default=2000, gt=0, description="Largest GraphQL document accepted, in tokens."
    )
    log_level: str = Field(default="INFO", description="Log level (DEBUG, INFO, WARNING, ERROR).")
    log_format: str = Field(
        default="console",
        pattern="^(console|json)$",
        description="Log format: console (development) or json.",
    )

    # -- subscriptions and the command-line client ---------------------------------------------------
    subscriber_queue_size: int = Field(
        default=1000,
        gt=0,
        description="Events a subscription may have waiting; one that falls further behind is ended "
        "with an error and resumes with `since`.",
    )
    stream_recheck_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between checks, on a quiet subscription, that the caller's grant still holds.",
    )
    max_connections_per_token: int = Field(
        default=64,
        gt=0,
        description="Websocket connections one token may hold open at once; the next is refused at "
        "connection_init (4403, TOO_MANY_CONNECTIONS).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Token the client commands (wml watch, upload, run, jobs, ...) send to the API: a "
        "consumer's, or the operator's for the operator commands.",
    )
    url: str | None = Field(
        default=None,
        description="The API's base URL the client commands talk to; default PUBLIC_URL, else "
        "http://HOST:PORT.",
    )

    graphiql_assets_dir: Path | None = Field(
        default=None,
        description="Directory with GraphiQL's browser files (scripts/get-graphiql); default: "
        "<python prefix>/share/wml-graphiql. Without them GraphiQL is off (never loaded from a CDN).",
    )
    graphiql: bool = Field(
        default=True,
        description="Serve the GraphiQL IDE on GET /graphql (development; the chart's production values "
        "turn it off).",
    )
    introspection: bool = Field(
        default=True,
        description="Answer GraphQL introspection queries (__schema, __type); off, the schema is not "
        "disclosed to callers (schema.graphql documents it).",
    )

    # -- derived values -------------------------------------------------------------------------------

    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'wml.db'}"

    def resolved_storage_url(self) -> str:
        return self.storage or f"file://{self.data_dir / 'files'}"

    def storage_credentials(self) -> StorageCredentials | None:
        """Explicit S3 keys, or None: the backend then uses the standard AWS mechanisms."""
        if self.s3.access_key_id is None or self.s3.secret_access_key is None:
            return None
        return StorageCredentials(self.s3.access_key_id, self.s3.secret_access_key.get_secret_value())

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        """A URL without a driver (``postgresql://``, as most tools write it) names the async driver the
        service installs; SQLAlchemy would otherwise pick a synchronous one that is not installed."""
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        return f"{ASYNC_DRIVERS.get(scheme.lower(), scheme)}{sep}{rest}"

    @field_validator("secret_key")
    @classmethod
    def _secret_key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_KEY:
            raise ValueError(f"must be at least {MIN_SECRET_KEY} bytes (e.g. openssl rand -base64 32)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """``k8s_api_url=...`` (a flat variable) becomes ``kubernetes.api_url``; the nested form, when also
        given, wins."""
        return _nested(data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            _NestedInit(settings_cls, init_settings),
            env_settings,
            _FlatEnvironment(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    def resolved_replica_id(self) -> str:
        if self.replica_id:
            return self.replica_id
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:8]
        return f"{socket.gethostname()[:80]}-{digest}"

    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def secure_data_dir(self) -> None:
        """Make the data directory the server's alone (0700): it holds the database, the signing key, the
        admin token, the file store and the job directories. The embedded SQLite database is created 0600
        (SQLite gives its journal and WAL files the database file's mode). Blocking; idempotent."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if self.database_url is None:
            database = self.data_dir / "wml.db"
            database.touch(mode=0o600)
            os.chmod(database, 0o600)
        for secret in _SECRET_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(self.data_dir / secret, 0o600)

    def resolved_admin_token(self) -> str:
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        return _generated_secret(self.data_dir / _SECRET_FILES[1], prefix="wmladm_")

    def resolved_secret_key(self) -> bytes:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        return _generated_secret(self.data_dir / _SECRET_FILES[0]).encode()


def _nested(data: Any) -> Any:
    """Flat names of nested settings (``k8s_api_url``) moved into their group (``kubernetes.api_url``);
    a value the group already has wins."""
    if not isinstance(data, dict) or not FLAT_NAMES.keys() & data.keys():
        return data
    data = dict(data)
    for flat, (concern, name) in FLAT_NAMES.items():
        if flat not in data:
            continue
        value = data.pop(flat)
        group = data.get(concern)
        if isinstance(group, BaseModel):
            group = group.model_dump()
        group = dict(group or {})
        group.setdefault(name, value)
        data[concern] = group
    return data


def _generated_secret(path: Path, prefix: str = "") -> str:
    """Read a secret kept in the data directory, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = prefix + secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(value + "\n", encoding="utf-8")
    tmp.replace(path)
    return value
