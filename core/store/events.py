"""The event repository: reads of the job event log (subscription replay, the bus's catch-up).

Events are written only by job transitions, in their transaction (:mod:`core.store.jobs`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import false, func
from sqlmodel import col, select

from core.models import JobEvent
from core.store.base import Repository
from core.store.rows import event_record, storable
from core.store.tables import JobEventRow


class EventRepository(Repository):
    """The job event log, oldest first; ``seq`` orders all events of the service."""

    async def events(self, job_id: str) -> list[JobEvent]:
        async with self.session() as s:
            q = select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(col(JobEventRow.seq))
            return [event_record(r) for r in (await s.exec(q)).all()]

    async def events_after(
        self, seq: int, *, job_id: str | None = None, grant_ids: Sequence[str] | None = None, limit: int = 500
    ) -> list[JobEvent]:
        """Up to ``limit`` events with a seq above ``seq``, oldest first (optionally one job's, or only
        those of ``grant_ids``)."""
        q = select(JobEventRow).where(col(JobEventRow.seq) > seq)
        if job_id is not None:
            q = q.where(JobEventRow.job_id == job_id if storable(job_id) else false())
        if grant_ids is not None:
            q = q.where(col(JobEventRow.grant_id).in_(list(grant_ids)))
        q = q.order_by(col(JobEventRow.seq)).limit(limit)
        async with self.session() as s:
            return [event_record(r) for r in (await s.exec(q)).all()]

    async def last_event_seq(self) -> int:
        async with self.session() as s:
            last = (await s.exec(select(func.max(JobEventRow.seq)))).one()
            return int(last or 0)
