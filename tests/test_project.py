"""Project-wide promises: the exported schema is current, migrations match the models, settings are
documented, and the operator commands work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import core.store.tables  # noqa: F401  (registers the tables)
from core.settings import Settings
from core.store.engine import create_engine, migrate
from graphql_api.schema import build_schema

ROOT = Path(__file__).resolve().parents[1]


def test_schema_graphql_matches_the_schema_the_code_builds() -> None:
    exported = (ROOT / "schema.graphql").read_text()
    assert exported == build_schema().as_str() + "\n", (
        "schema.graphql is stale: run `wml export-schema -o schema.graphql`"
    )


def test_schema_has_the_names_the_design_fixes() -> None:
    sdl = build_schema().as_str()
    for name in (
        "me: Consumer",
        "assets: [Asset!]!",
        "jobs(",
        "job(id: ID!)",
        "files(",
        "file(id: ID!)",
        "uploadFile(",
        "createUpload(",
        "deleteFile(",
        "createJob(",
        "cancelJob(",
        "deleteJob(",
        "scalar Long",
        "scalar Upload",
        "interface Error",
    ):
        assert name in sdl, name


async def test_migrations_produce_exactly_the_models(database_url: str) -> None:
    # On PostgreSQL the test database is a copy of a template the migrations built from nothing.
    await migrate(database_url)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), SQLModel.metadata)
            )
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"WML_{name.upper()}" for name in Settings.model_fields if f"WML_{name.upper()}" not in readme]
    assert missing == []
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


def test_consumers_create_prints_a_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    env = {"WML_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "wml.cli", "consumers", "create", "acme", "--asset", "dummy-job"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if "token" in line).strip()
    assert token.startswith("wml_")
    assert token.encode() not in (tmp_path / "wml.db").read_bytes()


def test_consumers_create_for_an_unknown_asset_fails_clearly(tmp_path: Path) -> None:
    env = {"WML_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "wml.cli", "consumers", "create", "acme", "--asset", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "asset 'nope' not found" in done.stderr


def test_serve_refuses_an_invalid_catalogue_naming_the_file(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "bad.yaml").write_text("id: x\nname: x\n")
    env = {
        "WML_DATA_DIR": str(tmp_path),
        "WML_CATALOG_DIR": str(catalog),
        "WML_PORT": "0",
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, "-m", "wml.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "bad.yaml" in done.stderr and "field 'image'" in done.stderr
