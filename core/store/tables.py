"""SQLModel tables. They never leave ``core``: the store turns rows into domain records.

Types stay portable (no SQLite-only SQL) so the same migrations run on PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, Text
from sqlmodel import Field, SQLModel

from core.models import MAX_TAG_KEY, MAX_TAG_VALUE

# SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere a 64-bit sequence.
BigIntPK = BigInteger().with_variant(Integer, "sqlite")


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


class AssetRow(SQLModel, table=True):
    __tablename__ = "asset"
    id: str = Field(primary_key=True, max_length=64)
    version: str = Field(max_length=64)
    spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    active: bool = True
    updated_at: datetime = _ts(nullable=False)


class ConsumerRow(SQLModel, table=True):
    __tablename__ = "consumer"
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    participant_id: str | None = Field(default=None, max_length=500, unique=True)
    created_at: datetime = _ts(nullable=False)


class GrantRow(SQLModel, table=True):
    __tablename__ = "grant"
    id: str = Field(primary_key=True, max_length=40)
    consumer_id: str = Field(foreign_key="consumer.id", index=True, max_length=40)
    asset_id: str = Field(max_length=64)
    token_hash: str = Field(unique=True, max_length=64)
    state: str = Field(max_length=20)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=True)
    # EDC provisioning (null for grants an operator created)
    transfer_process_id: str | None = Field(default=None, max_length=500, unique=True)
    resource_definition_id: str | None = Field(default=None, max_length=500)
    callback_address: str | None = Field(default=None, max_length=2000)
    secret_salt: str | None = Field(default=None, max_length=64)
    policy: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    callback_state: str | None = Field(default=None, max_length=20, index=True)
    callback_attempts: int = 0
    callback_next_at: datetime | None = _ts(nullable=True)
    callback_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    deprovisioned_at: datetime | None = _ts(nullable=True)
    files_purged: bool = False
    dialect: str | None = Field(default=None, max_length=20)  # None: control plane; "dataplane"


class FileRow(SQLModel, table=True):
    __tablename__ = "file"
    __table_args__ = (Index("ix_file_grant_created", "grant_id", "created_at", "id"),)
    id: str = Field(primary_key=True, max_length=40)
    consumer_id: str = Field(foreign_key="consumer.id", index=True, max_length=40)
    grant_id: str = Field(max_length=40)
    job_id: str | None = Field(default=None, index=True, max_length=40)
    name: str = Field(max_length=255)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str | None = Field(default=None, max_length=64)
    content_type: str = Field(max_length=255)
    origin: str = Field(max_length=20)
    status: str = Field(max_length=20)  # PENDING (announced upload) or READY
    storage_key: str = Field(max_length=500)
    expected_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    expected_sha256: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=True)


class JobRow(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_grant_created", "grant_id", "created_at", "id"),
        Index("ix_job_state", "state"),
    )
    id: str = Field(primary_key=True, max_length=40)
    consumer_id: str = Field(foreign_key="consumer.id", index=True, max_length=40)
    grant_id: str = Field(max_length=40)
    asset_id: str = Field(max_length=64)
    asset_spec: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    inputs: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    parameters: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    state: str = Field(max_length=20)
    reason: str | None = Field(default=None, max_length=40)
    message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    exit_code: int | None = None
    backend_ref: str | None = Field(default=None, max_length=200, index=True)
    deadline_at: datetime | None = _ts(nullable=True)
    log_tail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    log_file_id: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    started_at: datetime | None = _ts(nullable=True)
    finished_at: datetime | None = _ts(nullable=True, index=True)  # the retention sweep's lookup
    owner: str | None = Field(default=None, max_length=100, index=True)  # the replica following it
    # What the consumer said of the job (core.models.JobDetails); its tags are also rows of job_tag.
    name: str | None = Field(default=None, max_length=200, index=True)
    description: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    tags: dict[str, str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    commands: list[list[str]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class JobTagRow(SQLModel, table=True):
    """A job's tag, one row each, so tasks are found by tag (TES's ``tag_key``/``tag_value``) on any
    database without JSON operators."""

    __tablename__ = "job_tag"
    __table_args__ = (Index("ix_job_tag_key_value", "key", "value"),)
    job_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=MAX_TAG_KEY)
    value: str = Field(max_length=MAX_TAG_VALUE)


class ReplicaRow(SQLModel, table=True):
    """A serving process and its lease: it renews ``heartbeat_at``; past the lease it is presumed dead."""

    __tablename__ = "replica"
    id: str = Field(primary_key=True, max_length=100)
    started_at: datetime = _ts(nullable=False)
    heartbeat_at: datetime = _ts(nullable=False)


class JobEventRow(SQLModel, table=True):
    __tablename__ = "job_event"
    # SQLite would otherwise reuse the highest seq once its event is deleted (with its job), and a
    # client resuming with since=<that seq> would miss the new event.
    __table_args__ = {"sqlite_autoincrement": True}
    seq: int | None = Field(default=None, sa_column=Column(BigIntPK, primary_key=True, autoincrement=True))
    job_id: str = Field(index=True, max_length=40)
    consumer_id: str = Field(index=True, max_length=40)
    grant_id: str = Field(index=True, max_length=40)
    state: str = Field(max_length=20)
    reason: str | None = Field(default=None, max_length=40)
    message: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    exit_code: int | None = None
    created_at: datetime = _ts(nullable=False)
