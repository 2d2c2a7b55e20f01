"""The README teaches what the code does: its consumer walk-through and its Python and JavaScript client
snippets run verbatim against a real server, its settings table is the code's, and nothing links outside the
repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ServerProcess, token_from

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
WALKTHROUGH = "<!-- walkthrough: tested by tests/test_readme.py -->"
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "helm/workflow-middlelayer/README.md",
]


def code_block(after: str, language: str) -> str:
    """The first ```language block after the text ``after``."""
    start = README.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no {language} block after {after!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    server = ServerProcess(tmp_path_factory.mktemp("readme"), log_level="WARNING")
    server.start()
    try:
        yield server, token_from(server.cli("consumers", "create", "acme", "--asset", "dummy-job"))
    finally:
        server.stop()


def _env(server: ServerProcess, token: str) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **server.env,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "WML_URL": server.url,
        "WML_TOKEN": token,
    }


def test_the_consumer_walkthrough_runs_verbatim(consumer: tuple[ServerProcess, str], tmp_path: Path) -> None:
    server, token = consumer
    setup = code_block("Tell `wml` where the API is", "sh")
    assert "export WML_URL=" in setup and "export WML_TOKEN=" in setup  # what the test sets below
    steps = code_block(WALKTHROUGH, "sh")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", steps],
        cwd=tmp_path,
        env=_env(server, token),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job is COMPLETE, exit code 0" in done.stdout
    assert "dummy-job: SLEEPTIME=1" in done.stdout  # cat results/result.txt: the second job's output
    assert (tmp_path / "results" / "result.txt").exists()


def test_the_python_gql_snippet_runs_verbatim(consumer: tuple[ServerProcess, str], tmp_path: Path) -> None:
    server, token = consumer
    (tmp_path / "input.txt").write_text("hello from gql\n")
    snippet = code_block("### From Python", "python")
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env=_env(server, token),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:5] == ["QUEUED", "INITIALIZING", "RUNNING", "COMPLETE"]
    assert "data first line: hello from gql" in done.stdout


def test_the_javascript_graphql_ws_snippet_runs_verbatim(
    consumer: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    """With the pinned libraries scripts/get-js-client installs (make test runs it)."""
    server, token = consumer
    libraries = Path(sys.executable).parents[1] / "share" / "wml-js-client" / "node_modules"
    assert libraries.is_dir(), "the JavaScript client libraries are missing: run scripts/get-js-client"
    (tmp_path / "node_modules").symlink_to(libraries)
    (tmp_path / "follow.mjs").write_text(code_block("### From JavaScript", "js"))
    env = _env(server, token)
    job_id = subprocess.run(
        ["wml", "run", "dummy-job", "--param", "SLEEPTIME=1"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    done = subprocess.run(
        ["node", "follow.mjs", job_id], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [line.strip() for line in done.stdout.splitlines()] == [
        "QUEUED",
        "INITIALIZING",
        "RUNNING",
        "COMPLETE",
    ]


def test_the_settings_table_is_generated_from_the_code() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings-table"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_links_outside_the_repository(document: Path) -> None:
    text = document.read_text()
    anchors = {_slug(h) for h in re.findall(r"(?m)^#+ (.*)$", text)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert not re.match(r"^[a-z]+:|^//", target), f"{document.name} links outside: {target}"
        path, _, anchor = target.partition("#")
        if path:
            assert (document.parent / path).exists(), f"{document.name} links to a missing file: {target}"
        elif anchor:
            assert anchor in anchors, f"{document.name} links to a missing heading: {target}"
    assert not re.search(r"<https?://", text), f"{document.name} has an autolink outside the repository"


def test_the_license_file_is_the_declared_license() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "Apache-2.0"
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
