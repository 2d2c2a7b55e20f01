"""Replicas and their leases, and the locks that make N replicas act as one service.

Each serving process is a replica with an id (``Settings.resolved_replica_id``) and a row whose
``heartbeat_at`` it renews; a replica whose heartbeat is older than its lease is presumed dead. Jobs name the
replica that follows them (``job.owner``, set when the job is started); see :mod:`core.supervisor` for what
happens to a dead replica's jobs.

:meth:`ReplicaRepository.exclusive` is a cross-process lock for work that must not run twice at once
(scheduling, which reads counts and then starts jobs; the callback sender; the reapers): a PostgreSQL
session advisory lock held on a connection of its own for the block. On SQLite (one process, see
``wml.single``) it is a no-op: the process's own locks suffice.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from sqlalchemy import delete, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select

from core.store.base import Repository
from core.store.tables import JobRow, ReplicaRow


def lock_key(name: str) -> int:
    """A stable 63-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(f"wml:{name}".encode()).digest()[:8], "big") >> 1


class ReplicaRepository(Repository):
    async def heartbeat(self, replica_id: str, now: datetime) -> None:
        """Renew the lease of ``replica_id`` (creating its row on the first beat)."""
        values = {"id": replica_id, "started_at": now, "heartbeat_at": now}
        dialect = postgresql if self.is_postgresql else sqlite
        q = dialect.insert(ReplicaRow).values(**values)
        q = q.on_conflict_do_update(index_elements=["id"], set_={"heartbeat_at": now})
        async with self.engine.begin() as conn:
            await conn.execute(q)

    async def dead(self, silent_since: datetime) -> list[str]:
        """Replicas whose last heartbeat is older than ``silent_since``."""
        async with self.session() as s:
            q = select(ReplicaRow.id).where(col(ReplicaRow.heartbeat_at) < silent_since)
            return list((await s.exec(q)).all())

    async def forget(self, replica_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(ReplicaRow).where(col(ReplicaRow.id) == replica_id))

    async def take_over(self, job_id: str, dead: str, replica_id: str) -> bool:
        """Make ``replica_id`` the owner of a job ``dead`` owned (compare and set: one taker wins)."""
        q = update(JobRow).where(col(JobRow.id) == job_id, col(JobRow.owner) == dead)
        async with self.engine.begin() as conn:
            return bool((await conn.execute(q.values(owner=replica_id))).rowcount)

    async def adopt_unowned(self, replica_id: str, states: list[str]) -> int:
        """Live jobs started before replicas had owners (an upgrade) become ``replica_id``'s."""
        q = update(JobRow).where(col(JobRow.owner).is_(None), col(JobRow.state).in_(states))
        async with self.engine.begin() as conn:
            return int((await conn.execute(q.values(owner=replica_id))).rowcount)

    @asynccontextmanager
    async def exclusive(self, name: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the service-wide lock ``name`` for the block: True when held; with ``wait=False``, False
        at once when another replica holds it (the block then should do nothing)."""
        if not self.is_postgresql:
            yield True
            return
        async with self.engine.connect() as conn:
            key = {"key": lock_key(name)}
            if wait:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
                held = True
            else:
                held = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key)).scalar())
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    await conn.commit()
