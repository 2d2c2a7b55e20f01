"""The file service: consumer uploads, announced (large) uploads, downloads and deletion.

Bytes stream straight into the storage backend, which enforces the size limit while writing, so an
oversized upload leaves neither an object nor a row behind. File names are user text and are only ever
metadata: storage keys are built from opaque ids.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta

from backends.storage.base import (
    InvalidRangeError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageBackend,
    StorageError,
)
from core.auth import Principal, grant_is_usable
from core.errors import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnavailableError,
    ValidationError,
)
from core.metrics import Metrics
from core.models import FileOrigin, FileRecord, FileStatus, Page, new_id, utcnow
from core.signing import UrlSigner
from core.store import Store
from core.uploads import upload_url, verify_upload

MAX_NAME_BYTES = 255
MAX_CONTENT_TYPE = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"
MEDIA_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*')
SHA256_HEX = frozenset("0123456789abcdef")
# One ``bytes=first-last`` range; 20 digits already reach past any size.
BYTE_RANGE = re.compile(r"bytes=[ \t]*(?P<first>[0-9]{0,20})-(?P<last>[0-9]{0,20})[ \t]*")


def storage_key(consumer_id: str, file_id: str) -> str:
    return f"consumers/{consumer_id}/files/{file_id}"


def check_name(name: str) -> str:
    """A file name is display text: refuse what would be dangerous if anybody used it as a path."""
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise ValidationError("file name must not be empty", field="name")
    # First: a lone surrogate (JSON can carry "\ud800") has no UTF-8 encoding to count the bytes of.
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in name):
        raise ValidationError("file name must not contain control characters (such as NUL)", field="name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValidationError(f"file name longer than {MAX_NAME_BYTES} bytes", field="name")
    if any(ch in name for ch in "/\\") or name in {".", ".."}:
        raise ValidationError("file name must not contain a path (/, \\, . or ..)", field="name")
    return name


def check_content_type(value: str | None) -> str:
    """A media type (``type/subtype``, optional parameters); it is sent back as a response header."""
    if value is None or not value.strip():
        return DEFAULT_CONTENT_TYPE
    value = value.strip()
    if len(value) > MAX_CONTENT_TYPE or not MEDIA_TYPE.fullmatch(value):
        raise ValidationError("content type must be a media type such as text/plain", field="contentType")
    return value


def check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if len(value) != 64 or not set(value) <= SHA256_HEX:
        raise ValidationError("sha256 must be 64 hexadecimal characters", field="sha256")
    return value


@dataclass(frozen=True, slots=True)
class Download:
    file: FileRecord
    start: int
    length: int
    chunks: AsyncIterator[bytes]


class FileService:
    def __init__(
        self,
        store: Store,
        storage: StorageBackend,
        signer: UrlSigner,
        *,
        max_upload: int,
        url_ttl: int,
        pending_ttl: int,
        max_stored: int = 100 * 1024**3,
        max_pending: int = 16,
        metrics: Metrics | None = None,
    ) -> None:
        """``max_stored``: bytes a consumer may keep (ready files and announced uploads); ``max_pending``:
        announced uploads a consumer may have incomplete at once."""
        self._metrics = metrics or Metrics()
        self._store = store
        self._storage = storage
        self._signer = signer
        self._max_upload = max_upload
        self._url_ttl = url_ttl
        self._pending_ttl = pending_ttl
        self._max_stored = max_stored
        self._max_pending = max_pending

    async def upload_limit(self, principal: Principal) -> int:
        """The global limit, capped by the largest input slot of the assets this token may use."""
        if principal.is_operator:
            return self._max_upload
        return await self._limit_for_assets(principal.asset_ids)

    async def _limit_for_assets(self, asset_ids: Iterable[str]) -> int:
        assets = await self._store.assets.list_assets(asset_ids)
        sizes = [s.max_size for a in assets for s in a.inputs]
        if not sizes:
            return 0
        if any(size is None for size in sizes):
            return self._max_upload
        return min(self._max_upload, max(s for s in sizes if s is not None))

    def _owner(self, principal: Principal) -> tuple[str, str]:
        if principal.is_operator or principal.consumer_id is None:
            raise ValidationError("the operator has no file space; use a consumer token")
        return principal.consumer_id, sorted(principal.grant_ids)[0]

    async def upload(
        self, principal: Principal, name: str, content_type: str | None, chunks: AsyncIterator[bytes]
    ) -> FileRecord:
        consumer_id, grant_id = self._owner(principal)
        name = check_name(name)
        content_type = check_content_type(content_type)
        limit = await self.upload_limit(principal)
        room, _ = await self._room(consumer_id)
        file_id = new_id("f")
        key = storage_key(consumer_id, file_id)
        info = await self._put(key, chunks, limit, room)
        self._metrics.bytes_uploaded.inc(info.size)
        record = FileRecord(
            id=file_id,
            consumer_id=consumer_id,
            grant_id=grant_id,
            job_id=None,
            name=name,
            size=info.size,
            sha256=info.sha256,
            content_type=content_type,
            origin=FileOrigin.UPLOAD,
            status=FileStatus.READY,
            storage_key=key,
            created_at=utcnow(),
            expires_at=None,
        )
        try:
            await self._store.files.insert_file(record)
        except BaseException:
            await self._storage.delete(key)
            raise
        return record

    async def _room(self, consumer_id: str, reserved: int = 0) -> tuple[int, int]:
        """Bytes ``consumer_id`` may still store (counting ``reserved`` of its own as free) and its pending
        uploads; QuotaExceededError when there is no room at all."""
        used, pending = await self._store.files.usage(consumer_id)
        room = self._max_stored - used + reserved
        if room <= 0:
            raise QuotaExceededError(self._full())
        return room, pending

    def _full(self) -> str:
        return (
            f"your stored files reached their limit of {self._max_stored} bytes: "
            "delete files or finished jobs to make room"
        )

    async def _put(
        self, key: str, chunks: AsyncIterator[bytes], limit: int, room: int | None = None
    ) -> ObjectInfo:
        """Store the bytes, at most ``limit`` of them and no more than the consumer's ``room``."""
        bound = limit if room is None else min(limit, room)
        try:
            return await self._storage.put(key, chunks, max_size=bound)
        except ObjectTooLargeError:
            if bound < limit:
                raise QuotaExceededError(self._full()) from None
            raise PayloadTooLargeError(limit) from None
        except StorageError as e:
            raise UnavailableError(f"storage failed: {e}") from e

    async def create_upload(
        self, principal: Principal, name: str, size: int | None, sha256: str | None, content_type: str | None
    ) -> tuple[FileRecord, str, int]:
        """Announce a large upload: a PENDING file and a URL to PUT its bytes to (then completeUpload).

        The URL is a presigned storage URL when the backend offers one (the bytes bypass the API),
        else the API's own signed ``PUT /files/{id}/content``.
        """
        consumer_id, grant_id = self._owner(principal)
        name = check_name(name)
        content_type = check_content_type(content_type)
        sha256 = check_sha256(sha256)
        limit = await self.upload_limit(principal)
        if size is not None and size < 0:
            raise ValidationError("size must not be negative", field="size")
        if size is not None and size > limit:
            raise PayloadTooLargeError(limit)
        room, pending = await self._room(consumer_id)
        if pending >= self._max_pending:
            raise QuotaExceededError(
                f"at most {self._max_pending} announced uploads may be incomplete at once: "
                "complete or delete one first"
            )
        if size is not None and size > room:
            raise QuotaExceededError(self._full())
        file_id = new_id("f")
        now = utcnow()
        record = FileRecord(
            id=file_id,
            consumer_id=consumer_id,
            grant_id=grant_id,
            job_id=None,
            name=name,
            size=0,
            sha256=None,
            content_type=content_type,
            origin=FileOrigin.UPLOAD,
            status=FileStatus.PENDING,
            storage_key=storage_key(consumer_id, file_id),
            created_at=now,
            expires_at=now + timedelta(seconds=self._pending_ttl),
            expected_size=size,
            expected_sha256=sha256,
        )
        url, expires = await upload_url(
            self._storage, self._signer, file_id, record.storage_key, self._url_ttl, size
        )
        await self._store.files.insert_file(record)
        return record, url, expires

    async def complete_upload(self, principal: Principal, file_id: str) -> FileRecord:
        """Verify an announced upload's bytes (size, sha256) in storage and make the file usable.

        A file that is already READY (the API's PUT route completes it) is returned as it is.
        """
        record = await self._store.files.get_file(file_id)
        if record is None or not principal.may_see(record.grant_id) or record.origin != FileOrigin.UPLOAD:
            raise NotFoundError("file", file_id)
        if record.status == FileStatus.READY:
            return record
        if record.expires_at is not None and record.expires_at <= utcnow():
            raise NotFoundError("file", file_id)  # expired: the sweeper is about to remove it
        room, _ = await self._room(record.consumer_id, reserved=record.expected_size or 0)
        info = await verify_upload(self._storage, record, min(await self.upload_limit(principal), room))
        await self._store.files.update_file(
            file_id, size=info.size, sha256=info.sha256, status=FileStatus.READY.value, expires_at=None
        )
        return replace(record, size=info.size, sha256=info.sha256, status=FileStatus.READY, expires_at=None)

    async def receive_upload(
        self, file_id: str, expires: str | None, signature: str | None, chunks: AsyncIterator[bytes]
    ) -> FileRecord:
        """The bytes of an announced upload, over a signed URL; checked against what was announced."""
        if not self._signer.verify("PUT", file_id, expires, signature):
            raise NotFoundError("file", file_id)
        record = await self._store.files.get_file(file_id)
        if record is None:
            raise NotFoundError("file", file_id)
        if record.status != FileStatus.PENDING:
            raise ConflictError("this upload was already completed")
        grant = await self._store.grants.get_grant(record.grant_id)
        if grant is None or not grant_is_usable(grant):  # revoked or ended: the URL stops at once
            raise NotFoundError("file", file_id)
        # The same limit as for an upload through the API: the URL carries no principal, the grant does.
        limit = await self._limit_for_assets([grant.asset_id])
        announced = record.expected_size
        room, _ = await self._room(record.consumer_id, reserved=announced or 0)
        try:
            info = await self._put(
                record.storage_key, chunks, limit if announced is None else min(announced, limit), room
            )
            self._metrics.bytes_uploaded.inc(info.size)
        except PayloadTooLargeError:
            if announced is not None and announced <= limit:
                raise ValidationError(
                    f"received more than the {announced} bytes announced", field="content"
                ) from None
            raise
        problem = None
        if record.expected_size is not None and info.size != record.expected_size:
            problem = f"received {info.size} bytes but {record.expected_size} were announced"
        elif record.expected_sha256 is not None and info.sha256 != record.expected_sha256:
            problem = "content does not match the announced sha256"
        if problem:
            await self._storage.delete(record.storage_key)
            raise ValidationError(problem, field="content")
        await self._store.files.update_file(
            file_id, size=info.size, sha256=info.sha256, status=FileStatus.READY.value, expires_at=None
        )
        return replace(record, size=info.size, sha256=info.sha256, status=FileStatus.READY, expires_at=None)

    async def get(self, principal: Principal, file_id: str) -> FileRecord:
        record = await self._store.files.get_file(file_id)
        if record is None or not principal.may_see(record.grant_id) or record.status != FileStatus.READY:
            raise NotFoundError("file", file_id)
        return record

    async def list(
        self, principal: Principal, *, job_id: str | None, first: int, after: str | None
    ) -> Page[FileRecord]:
        try:
            return await self._store.files.list_files(
                principal.grant_scope, job_id=job_id, first=first, after=after
            )
        except ValueError:
            raise ValidationError("invalid cursor", field="after") from None

    async def delete(self, principal: Principal, file_id: str) -> FileRecord:
        """Delete a file; one bound as the input of a job that has not ended yet is refused."""
        record = await self.get(principal, file_id)
        if await self._used_by_live_job(record):
            raise ConflictError("file is an input of a job that has not ended; cancel it or wait for it")
        await self._store.files.delete_file(file_id)
        await self._storage.delete(record.storage_key)
        return record

    async def _used_by_live_job(self, record: FileRecord) -> bool:
        # Inputs are a JSON column; the live jobs are few (bounded by the quotas), so filter them here.
        return any(
            binding.file_id == record.id
            for job in await self._store.jobs.live_jobs()
            if job.consumer_id == record.consumer_id
            for binding in job.inputs
        )

    async def remove(self, record: FileRecord) -> None:
        """Delete a file without an access check (the supervisor and the reaper use this)."""
        await self._store.files.delete_file(record.id)
        await self._storage.delete(record.storage_key)

    async def download_url(self, record: FileRecord) -> str:
        presigned = await self._storage.presign_get(record.storage_key, self._url_ttl)
        if presigned is not None:
            return presigned
        return self._signer.url("GET", record.id, self._url_ttl)[0]

    async def open_download(
        self, file_id: str, expires: str | None, signature: str | None, range_header: str | None
    ) -> Download:
        if not self._signer.verify("GET", file_id, expires, signature):
            raise NotFoundError("file", file_id)
        record = await self._store.files.get_file(file_id)
        if record is None or record.status != FileStatus.READY:
            raise NotFoundError("file", file_id)
        grant = await self._store.grants.get_grant(record.grant_id)
        if grant is None or not grant_is_usable(grant):  # revoked or ended: the URL stops at once
            raise NotFoundError("file", file_id)
        start, length = parse_range(range_header, record.size)
        try:
            chunks = self._storage.get(record.storage_key, offset=start, length=length)
        except (ObjectNotFoundError, InvalidRangeError):
            raise NotFoundError("file", file_id) from None
        return Download(file=record, start=start, length=length, chunks=self._counted(chunks))

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._metrics.bytes_downloaded.inc(len(chunk))
            yield chunk

    async def sweep_expired(self) -> int:
        """Remove announced uploads that never completed."""
        expired = await self._store.files.expired_files(utcnow())
        for record in expired:
            await self.remove(record)
        return len(expired)


class RangeNotSatisfiableError(ValidationError):
    code = "RANGE_NOT_SATISFIABLE"

    def __init__(self, size: int) -> None:
        super().__init__("requested range not satisfiable", field="range")
        self.size = size


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """(start, length) for a single ``bytes=`` range; the whole file when there is no header.

    Multiple ranges are not supported and are answered with the whole file, as RFC 9110 allows; so is a
    header that is not a valid range (``int()`` alone would take ``--1``, ``+5`` or ``1_0``).
    """
    match = BYTE_RANGE.fullmatch(header or "")
    if match is None or match["first"] == match["last"] == "":
        return 0, size
    first, last = match["first"], match["last"]
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(size)
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiableError(size)
    end = min(end, size - 1)
    return start, end - start + 1
