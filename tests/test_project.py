"""Project-wide promises: the exported schema is current, migrations match the models, settings are
documented, and the operator commands work."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import core.store.tables  # noqa: F401  (registers the tables)
from core.settings import FLAT_NAMES, NESTED, Settings
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
    """Each variable a deployment sets is in the README's table: the top-level settings by name, the nested
    ones by the flat name they have always had (WML_K8S_API_URL for settings.kubernetes.api_url)."""
    readme = (ROOT / "README.md").read_text()
    names = [name for name in Settings.model_fields if name not in NESTED] + list(FLAT_NAMES)
    assert [f"WML_{n.upper()}" for n in names if f"`WML_{n.upper()}`" not in readme] == []
    for concern in NESTED:
        assert f"`WML_{concern.upper()}__" in readme, f"the README does not show the nested form of {concern}"
    models = [Settings, *(Settings.model_fields[c].annotation for c in NESTED)]
    for model in models:
        for name, field in model.model_fields.items():  # type: ignore[union-attr]
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


PRODUCT = ("wml", "core", "graphql_api", "provisioner", "backends", "sidecar", "dummy-job")


def _third_party_imports(path: Path) -> set[str]:
    """The top-level names of what ``path`` imports from outside the standard library and this tree."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {top for top in found if top not in sys.stdlib_module_names and not (ROOT / top).exists()}


def test_every_distribution_the_product_imports_is_declared() -> None:
    """A module imported only through another package's dependency (cross-web came with Strawberry) breaks
    the day that package drops it: each third-party import names a distribution in pyproject.toml (typing
    stubs, imported only for the type checker, are dev dependencies)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        requirements = tomllib.load(f)["project"]["dependencies"]
    declared = {re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    providers = importlib.metadata.packages_distributions()
    undeclared = set()
    for path in (p for folder in PRODUCT for p in (ROOT / folder).rglob("*.py")):
        for top in _third_party_imports(path) - {t for t in providers if t.startswith("types_")}:
            distributions = {d.lower().replace("_", "-") for d in providers.get(top, [])}
            if not distributions & declared:
                undeclared.add(f"{path.relative_to(ROOT)}: {top} ({', '.join(sorted(distributions))})")
    assert not undeclared, sorted(undeclared)


def test_make_demo_installs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    planned = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [
        line for line in planned.splitlines() if "pip install" in line and "--upgrade pip" not in line
    ]
    assert installs == [f"{tmp_path / 'venv'}/bin/python -m pip install --quiet -e ."]


# The top-level modules of the dev extra's packages: the demo and the server must run without them.
DEV_MODULES = (
    "pytest", "moto", "playwright", "hypothesis", "hypothesis_graphql", "jsonschema", "kubernetes_validate",
    "tes", "mypy", "ruff", "importlinter", "xdist",
)  # fmt: skip


def test_the_demo_and_the_server_import_nothing_of_the_dev_extra() -> None:
    probe = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {DEV_MODULES!r}: raise ImportError('dev-only: ' + name)\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import wml.cli, wml.demo, wml.server, wml.app, wml.client.connector, wml.commands.consumer\n"
        "import graphql_api.schema, core.services, backends.workflow.registry, backends.storage.registry\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
