"""A database URL as most tools write it (``postgresql://...``, no driver) names the async driver the
service installs, instead of failing with ``No module named 'psycopg'``."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import Settings
from tests.support.api import running_api


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://wml:secret@db:5432/wml", "postgresql+asyncpg://wml:secret@db:5432/wml"),
        ("postgres://wml@db/wml?ssl=require", "postgresql+asyncpg://wml@db/wml?ssl=require"),
        ("sqlite:////var/lib/wml/wml.db", "sqlite+aiosqlite:////var/lib/wml/wml.db"),
        ("postgresql+asyncpg://wml@db/wml", "postgresql+asyncpg://wml@db/wml"),
    ],
)
def test_a_url_without_a_driver_gets_the_installed_async_one(given: str, used: str) -> None:
    assert Settings(database_url=given).resolved_database_url() == used


async def test_the_service_runs_on_a_plain_postgresql_url(pg_url: str, tmp_path: Path) -> None:
    plain = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    assert plain.startswith("postgresql://")
    async with running_api(tmp_path / "data", database_url=plain) as api:
        token = await api.consumer("plain")
        assert (await api.data("{ me { name } }", token=token))["me"] == {"name": "plain"}
