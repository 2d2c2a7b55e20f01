"""Domain records: what services hand to transports. Plain frozen dataclasses, built from table rows."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from core.assets import Asset
from core.states import JobState

T = TypeVar("T")
MAX_TAG_KEY = 100
MAX_TAG_VALUE = 500


def new_id(prefix: str) -> str:
    """Opaque ids: a kind prefix and 128 random bits; safe in storage keys and URLs."""
    return f"{prefix}_{secrets.token_hex(16)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class GrantState(enum.StrEnum):
    PROVISIONING = "PROVISIONING"
    ACTIVE = "ACTIVE"
    FAILED_CALLBACK = "FAILED_CALLBACK"
    DEPROVISIONED = "DEPROVISIONED"


class CallbackState(enum.StrEnum):
    """Where the provisioning callback to the connector stands."""

    PENDING = "PENDING"  # to be sent (again) at callback_next_at
    DELIVERED = "DELIVERED"
    UNAUTHORIZED = "UNAUTHORIZED"  # the connector refused our API key; retried slowly
    GAVE_UP = "GAVE_UP"


class FileOrigin(enum.StrEnum):
    UPLOAD = "UPLOAD"
    JOB_OUTPUT = "JOB_OUTPUT"
    JOB_LOG = "JOB_LOG"


class FileStatus(enum.StrEnum):
    PENDING = "PENDING"  # announced by createUpload, bytes not yet received
    READY = "READY"


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    name: str
    participant_id: str | None
    created_at: datetime


DATAPLANE = "dataplane"  # Grant.dialect of a grant made through the data plane's ProvisionHttp


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    consumer_id: str
    asset_id: str
    state: GrantState
    created_at: datetime
    expires_at: datetime | None
    transfer_process_id: str | None = None
    resource_definition_id: str | None = None
    callback_address: str | None = None
    secret_salt: str | None = None
    callback_state: CallbackState | None = None
    callback_attempts: int = 0
    callback_next_at: datetime | None = None
    callback_error: str | None = None
    deprovisioned_at: datetime | None = None
    files_purged: bool = False
    # How the connector reached us: None, its control plane (provision-http, EDC milestone-8 to 0.15);
    # "dataplane", its data plane's ProvisionHttp (EDC 0.14+, the only one from 0.16): the callbacks differ.
    dialect: str | None = None


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    consumer_id: str
    grant_id: str
    job_id: str | None
    name: str
    size: int
    sha256: str | None
    content_type: str
    origin: FileOrigin
    status: FileStatus
    storage_key: str
    created_at: datetime
    expires_at: datetime | None
    expected_size: int | None = None
    expected_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class InputBinding:
    slot: str
    file_id: str


@dataclass(frozen=True, slots=True)
class JobDetails:
    """What a consumer may say of a job besides its asset, inputs and parameters: a name, a description and
    tags to find it by (TES's), and commands of its own where the asset allows them (run in order in the
    one job; none: the asset's command)."""

    name: str | None = None
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    commands: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    consumer_id: str
    grant_id: str
    asset_id: str
    asset: Asset
    inputs: tuple[InputBinding, ...]
    parameters: dict[str, Any]
    state: JobState
    reason: str | None
    message: str | None
    exit_code: int | None
    backend_ref: str | None
    deadline_at: datetime | None
    log_tail: str | None
    log_file_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # The replica that started the job and follows it in its backend (None while QUEUED, see
    # core.supervisor): host-bound backends' jobs stay with it, a shared backend's are taken over.
    owner: str | None = None
    details: JobDetails = JobDetails()

    @classmethod
    def queued(
        cls,
        *,
        job_id: str,
        consumer_id: str,
        grant_id: str,
        asset: Asset,
        inputs: tuple[InputBinding, ...] = (),
        parameters: dict[str, Any] | None = None,
        details: JobDetails | None = None,
        now: datetime | None = None,
    ) -> Job:
        """A new job as it enters the queue: QUEUED, with the asset's queue timeout as its deadline."""
        now = now or utcnow()
        return cls(
            id=job_id,
            consumer_id=consumer_id,
            grant_id=grant_id,
            asset_id=asset.id,
            asset=asset,
            inputs=inputs,
            parameters=parameters or {},
            state=JobState.QUEUED,
            reason=None,
            message=None,
            exit_code=None,
            backend_ref=None,
            deadline_at=now + timedelta(seconds=asset.timeouts.queue),
            log_tail=None,
            log_file_id=None,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            details=details or JobDetails(),
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    seq: int
    job_id: str
    consumer_id: str
    grant_id: str
    state: JobState
    reason: str | None
    message: str | None
    exit_code: int | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_next: bool
    end_cursor: str | None
