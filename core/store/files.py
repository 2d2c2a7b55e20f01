"""The file repository: uploaded inputs, job outputs and logs (their bytes live in the storage backend)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, false, func, update
from sqlmodel import col, select

from core.models import FileRecord, FileStatus, Page
from core.store.base import Repository
from core.store.rows import file_fields, file_record, storable
from core.store.tables import FileRow


class FileRepository(Repository):
    """File records; a job's outputs are written by its terminal transition (see the job repository)."""

    async def insert_file(self, record: FileRecord) -> None:
        async with self.session() as s:
            s.add(FileRow(**file_fields(record)))
            await s.commit()

    async def get_file(self, file_id: str) -> FileRecord | None:
        if not storable(file_id):
            return None
        async with self.session() as s:
            row = await s.get(FileRow, file_id)
            return file_record(row) if row else None

    async def usage(self, consumer_id: str) -> tuple[int, int]:
        """What ``consumer_id`` keeps stored: bytes (ready files, plus the announced size of pending
        uploads) and how many uploads are pending."""
        status, pending_value = col(FileRow.status), FileStatus.PENDING.value
        held = func.coalesce(
            func.sum(
                case(
                    (status == pending_value, func.coalesce(col(FileRow.expected_size), 0)),
                    else_=col(FileRow.size),
                )
            ),
            0,
        )
        pending = func.coalesce(func.sum(case((status == pending_value, 1), else_=0)), 0)
        async with self.session() as s:
            row = (await s.exec(select(held, pending).where(FileRow.consumer_id == consumer_id))).one()
            return int(row[0]), int(row[1])

    async def files_by_ids(self, ids: Sequence[str]) -> dict[str, FileRecord]:
        ids = [i for i in ids if storable(i)]
        if not ids:
            return {}
        async with self.session() as s:
            rows = (await s.exec(select(FileRow).where(col(FileRow.id).in_(list(ids))))).all()
            return {r.id: file_record(r) for r in rows}

    async def files_of_jobs(self, job_ids: Sequence[str]) -> list[FileRecord]:
        if not job_ids:
            return []
        async with self.session() as s:
            q = select(FileRow).where(col(FileRow.job_id).in_(list(job_ids))).order_by(col(FileRow.name))
            return [file_record(r) for r in (await s.exec(q)).all()]

    async def files_of_grant(self, grant_id: str) -> list[FileRecord]:
        async with self.session() as s:
            return [
                file_record(r)
                for r in (await s.exec(select(FileRow).where(FileRow.grant_id == grant_id))).all()
            ]

    async def list_files(
        self, grant_ids: Sequence[str] | None, *, job_id: str | None, first: int, after: str | None
    ) -> Page[FileRecord]:
        q = select(FileRow).where(FileRow.status == FileStatus.READY.value)
        if grant_ids is not None:
            q = q.where(col(FileRow.grant_id).in_(list(grant_ids)))
        if job_id is not None:
            q = q.where(FileRow.job_id == job_id if storable(job_id) else false())
        return await self._page(q, FileRow, file_record, first, after)

    async def update_file(self, file_id: str, **fields: Any) -> None:
        async with self.session() as s:
            await s.exec(update(FileRow).where(col(FileRow.id) == file_id).values(**fields))
            await s.commit()

    async def delete_file(self, file_id: str) -> None:
        async with self.session() as s:
            await s.exec(delete(FileRow).where(col(FileRow.id) == file_id))
            await s.commit()

    async def expired_files(self, now: datetime) -> list[FileRecord]:
        async with self.session() as s:
            q = select(FileRow).where(col(FileRow.expires_at).is_not(None), col(FileRow.expires_at) < now)
            return [file_record(r) for r in (await s.exec(q)).all()]
