"""Alembic environment: runs migrations over the service's async engine (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.store.tables  # noqa: F401  (registers the tables on the metadata)
from core.store.engine import create_engine

target_metadata = SQLModel.metadata
# pg_advisory_xact_lock key of migrations: replicas starting at once on one database migrate one at a time
# (the others wait, then find the schema at head). Any constant the service uses for nothing else.
MIGRATION_LOCK = 0x776D6C_6D6967  # "wml" "mig"


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":  # held until this transaction (the migration) commits
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run them against a database")
asyncio.run(_main())
