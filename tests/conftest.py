"""Shared fixtures: the real service on loopback with a test catalogue, on SQLite and on PostgreSQL.

Every test that takes ``database_url`` (directly, or through ``api``) runs twice: ``[sqlite]`` on a
file in its temporary directory, ``[postgresql]`` on a fresh database of the session's throwaway
PostgreSQL server (started on first use; see tests/support/postgres.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.api import Api, running_api
from tests.support.postgres import PostgresServer
from tests.support.postgres import postgres_server as _postgres_server
from tests.support.s3 import moto_server, s3  # noqa: F401  (S3 fixtures for every test package)

DATABASES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    yield from _postgres_server()


@pytest.fixture
async def pg_url(postgres: PostgresServer) -> AsyncIterator[str]:
    """A fresh database of the migrated schema on the session's PostgreSQL server (replica tests)."""
    name = await postgres.create_database()
    try:
        yield postgres.url(name)
    finally:
        await postgres.drop_database(name)


@pytest.fixture(params=DATABASES)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'wml.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = await server.create_database()
    try:
        yield server.url(name)
    finally:
        await server.drop_database(name)


@pytest.fixture
async def api(tmp_path: Path, database_url: str) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "data", database_url=database_url) as running:
        yield running
