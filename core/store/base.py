"""What every repository shares: the engine, ORM sessions, Core row reads and keyset paging."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import Page
from core.store.rows import decode_cursor, encode_cursor, storable


class Repository:
    """The engine and sessions a repository works through, and the query helpers they share."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self.is_postgresql = engine.dialect.name == "postgresql"

    def session(self) -> AsyncSession:
        return self._sessions()

    async def _rows(self, q: Any) -> Sequence[Any]:
        """The rows of a Core query, read outside any ORM session."""
        async with self.engine.connect() as conn:
            return (await conn.execute(q)).all()

    # -- paging ----------------------------------------------------------------------------------------

    async def _page(self, q: Any, table: Any, convert: Any, first: int, after: str | None) -> Page[Any]:
        if after is not None:
            decoded = decode_cursor(after)
            if decoded is None:
                raise ValueError("invalid cursor")
            stamp, ident = decoded
            if not storable(ident):
                raise ValueError("invalid cursor")
            q = q.where(
                or_(
                    col(table.created_at) < stamp,
                    (col(table.created_at) == stamp) & (col(table.id) < ident),
                )
            )
        q = q.order_by(col(table.created_at).desc(), col(table.id).desc()).limit(first + 1)
        async with self.session() as s:
            rows = list((await s.exec(q)).all())
        has_next = len(rows) > first
        rows = rows[:first]
        end = encode_cursor(rows[-1].created_at, rows[-1].id) if rows else None
        return Page(items=[convert(r) for r in rows], has_next=has_next, end_cursor=end)
