"""Migrations as replicas run them: several processes starting at once on one fresh PostgreSQL database
all come up (one migrates under an advisory lock, the others wait for it and find the schema at head)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.support.postgres import PostgresServer

REPLICAS = 6


async def test_replicas_migrating_a_fresh_database_at_once_all_succeed(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    name = await postgres.create_database(empty=True)
    try:
        env = {**os.environ, "WML_DATABASE_URL": postgres.url(name), "WML_DATA_DIR": str(tmp_path)}
        migrating = [
            subprocess.Popen(
                [sys.executable, "-m", "wml.cli", "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for _ in range(REPLICAS)
        ]
        outputs = [p.communicate(timeout=120)[0].decode() for p in migrating]

        assert [p.returncode for p in migrating] == [0] * REPLICAS, outputs
        conn = await asyncpg.connect(postgres.url(name, "postgresql"))
        try:
            versions = await conn.fetch("SELECT version_num FROM alembic_version")
        finally:
            await conn.close()
        assert len(versions) == 1
    finally:
        await postgres.drop_database(name)
