"""How the store's table rows become domain records and back, and the opaque paging cursor.

Pure functions, no database access: the store's modules share them so that a row read by the ORM or by a
Core statement turns into the same record.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from core.assets import Asset
from core.models import (
    CallbackState,
    Consumer,
    FileOrigin,
    FileRecord,
    FileStatus,
    Grant,
    GrantState,
    InputBinding,
    Job,
    JobDetails,
    JobEvent,
)
from core.states import JobState
from core.store.tables import ConsumerRow, FileRow, GrantRow, JobEventRow


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def storable(value: str) -> bool:
    # PostgreSQL text cannot hold NUL, so no stored id or key contains one: such a value matches nothing
    # (and must not reach the database, which would refuse the whole query).
    return "\x00" not in value


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = f"{as_utc(created_at).isoformat()}|{ident}"  # type: ignore[union-attr]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, ident = raw.split("|", 1)
        # In UTC, as stored: PostgreSQL compares instants and cannot take a time outside its calendar.
        return as_utc(datetime.fromisoformat(stamp)).astimezone(UTC), ident  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None


def consumer_record(r: ConsumerRow) -> Consumer:
    return Consumer(id=r.id, name=r.name, participant_id=r.participant_id, created_at=as_utc(r.created_at))  # type: ignore[arg-type]


def grant_record(r: GrantRow) -> Grant:
    return Grant(
        id=r.id,
        consumer_id=r.consumer_id,
        asset_id=r.asset_id,
        state=GrantState(r.state),
        created_at=as_utc(r.created_at),  # type: ignore[arg-type]
        expires_at=as_utc(r.expires_at),
        transfer_process_id=r.transfer_process_id,
        resource_definition_id=r.resource_definition_id,
        callback_address=r.callback_address,
        secret_salt=r.secret_salt,
        callback_state=CallbackState(r.callback_state) if r.callback_state else None,
        callback_attempts=r.callback_attempts,
        callback_next_at=as_utc(r.callback_next_at),
        callback_error=r.callback_error,
        deprovisioned_at=as_utc(r.deprovisioned_at),
        files_purged=r.files_purged,
        dialect=r.dialect,
    )


def file_fields(f: FileRecord) -> dict[str, Any]:
    return {
        "id": f.id,
        "consumer_id": f.consumer_id,
        "grant_id": f.grant_id,
        "job_id": f.job_id,
        "name": f.name,
        "size": f.size,
        "sha256": f.sha256,
        "content_type": f.content_type,
        "origin": f.origin.value,
        "status": f.status.value,
        "storage_key": f.storage_key,
        "expected_size": f.expected_size,
        "expected_sha256": f.expected_sha256,
        "created_at": f.created_at,
        "expires_at": f.expires_at,
    }


def file_record(r: FileRow) -> FileRecord:
    return FileRecord(
        id=r.id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        job_id=r.job_id,
        name=r.name,
        size=r.size,
        sha256=r.sha256,
        content_type=r.content_type,
        origin=FileOrigin(r.origin),
        status=FileStatus(r.status),
        storage_key=r.storage_key,
        created_at=as_utc(r.created_at),  # type: ignore[arg-type]
        expires_at=as_utc(r.expires_at),
        expected_size=r.expected_size,
        expected_sha256=r.expected_sha256,
    )


def job_fields(j: Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "consumer_id": j.consumer_id,
        "grant_id": j.grant_id,
        "asset_id": j.asset_id,
        "asset_spec": j.asset.frozen(),
        "inputs": [{"slot": b.slot, "file_id": b.file_id} for b in j.inputs],
        "parameters": j.parameters,
        "state": j.state.value,
        "reason": j.reason,
        "message": j.message,
        "exit_code": j.exit_code,
        "backend_ref": j.backend_ref,
        "deadline_at": j.deadline_at,
        "log_tail": j.log_tail,
        "log_file_id": j.log_file_id,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "owner": j.owner,
        "name": j.details.name,
        "description": j.details.description,
        "tags": dict(j.details.tags) or None,
        "commands": [list(c) for c in j.details.commands] or None,
    }


def job_record(r: Any) -> Job:
    # An ORM row or a Core row: both are read by attribute.
    return Job(
        id=r.id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        asset_id=r.asset_id,
        asset=Asset.model_validate(r.asset_spec),
        inputs=tuple(InputBinding(slot=i["slot"], file_id=i["file_id"]) for i in r.inputs),
        parameters=dict(r.parameters),
        state=JobState(r.state),
        reason=r.reason,
        message=r.message,
        exit_code=r.exit_code,
        backend_ref=r.backend_ref,
        deadline_at=as_utc(r.deadline_at),
        log_tail=r.log_tail,
        log_file_id=r.log_file_id,
        created_at=as_utc(r.created_at),  # type: ignore[arg-type]
        updated_at=as_utc(r.updated_at),  # type: ignore[arg-type]
        started_at=as_utc(r.started_at),
        finished_at=as_utc(r.finished_at),
        owner=r.owner,
        details=JobDetails(
            name=r.name,
            description=r.description,
            tags=dict(r.tags or {}),
            commands=tuple(tuple(c) for c in r.commands or ()),
        ),
    )


def event_record(r: JobEventRow) -> JobEvent:
    assert r.seq is not None
    return JobEvent(
        seq=r.seq,
        job_id=r.job_id,
        consumer_id=r.consumer_id,
        grant_id=r.grant_id,
        state=JobState(r.state),
        reason=r.reason,
        message=r.message,
        exit_code=r.exit_code,
        created_at=as_utc(r.created_at),  # type: ignore[arg-type]
    )
