"""Settings: every knob of the service, read once from ``WML_*`` environment variables.

Built once by the entry point and passed down; nothing else reads the environment. The embedded default
(SQLite + local disk + local processes, everything under ``WML_DATA_DIR``) needs no variable at all.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_catalog() -> Path:
    return _PROJECT_ROOT / "assets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WML_", extra="ignore")

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
        description="Key that signs download/upload URLs; when unset, one is generated into "
        "DATA_DIR/secret.key.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL (sqlite+aiosqlite:///..., postgresql+asyncpg://...); "
        "default: SQLite in DATA_DIR.",
    )
    storage: str | None = Field(
        default=None,
        description="Storage backend URL (file:///path, s3://bucket?...); default: DATA_DIR/files.",
    )
    workflow: str = Field(default="local://", description="Workflow backend URL (local://).")
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
    log_tail_lines: int = Field(default=50, gt=0, description="Lines of worker log kept on the job.")
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

    # -- derived values -------------------------------------------------------------------------------

    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'wml.db'}"

    def resolved_storage_url(self) -> str:
        return self.storage or f"file://{self.data_dir / 'files'}"

    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def resolved_admin_token(self) -> str:
        if self.admin_token is not None:
            return self.admin_token.get_secret_value()
        return _generated_secret(self.data_dir / "admin-token", prefix="wmladm_")

    def resolved_secret_key(self) -> bytes:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value().encode()
        return _generated_secret(self.data_dir / "secret.key").encode()


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
