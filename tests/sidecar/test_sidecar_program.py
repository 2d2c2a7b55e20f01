"""The side-car as a program (``wml sidecar stage-in|stage-out``): storage from the environment, manifests
from files, and exit codes that tell input problems, missing outputs and storage outages apart."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from backends.storage.base import StorageCredentials
from sidecar.main import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_OUTPUT_MISSING,
    EXIT_STORAGE,
    EXIT_USAGE,
    STAGE_IN,
    STAGE_OUT,
    run_step,
)
from sidecar.manifest import OUTPUT_MANIFEST_MARKER
from tests.support.s3 import BUCKET, CREDENTIALS, S3Server

RESULT = b"the answer is 42\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def stage_out_manifest(tmp_path: Path, *outputs: dict[str, Any]) -> Path:
    return write_json(
        tmp_path / "stage-out.json",
        {"outputs": list(outputs), "result_path": str(tmp_path / "result" / "outputs.json")},
    )


def stage_in_manifest(tmp_path: Path, key: str, content: bytes) -> Path:
    entry = {"slot": "data", "kind": "file", "path": "data", "key": key, "size": len(content)}
    return write_json(tmp_path / "stage-in.json", {"inputs": [{**entry, "sha256": sha(content)}]})


def directory(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def dead_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def run_program(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WML_LOG_FORMAT": "json"}
    return subprocess.run(
        [sys.executable, "-m", "wml.cli", "sidecar", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- the program, as a container would run it ----------------------------------------------------------


def test_stage_out_then_stage_in_through_s3_from_the_environment(tmp_path: Path, s3: S3Server) -> None:
    env = {
        "WML_STORAGE": s3.url(),
        "WML_S3_ACCESS_KEY_ID": CREDENTIALS.access_key_id,
        "WML_S3_SECRET_ACCESS_KEY": CREDENTIALS.secret_access_key,
    }
    outputs = directory(tmp_path / "outputs")
    (outputs / "result.txt").write_bytes(RESULT)
    out = stage_out_manifest(tmp_path, {"name": "result", "path": "result.txt", "key": "jobs/j1/result"})

    staged_out = run_program(tmp_path, env, "stage-out", "--manifest", str(out), "--root", str(outputs))

    assert staged_out.returncode == EXIT_OK, staged_out.stderr
    written = json.loads((tmp_path / "result" / "outputs.json").read_text())
    assert written["outputs"] == [
        {"name": "result", "key": "jobs/j1/result", "size": 17, "sha256": sha(RESULT)}
    ]
    assert CREDENTIALS.secret_access_key not in staged_out.stderr + staged_out.stdout
    last_line = staged_out.stdout.strip().splitlines()[-1]  # for backends that read only the log
    assert last_line.startswith(OUTPUT_MANIFEST_MARKER)
    assert json.loads(last_line.removeprefix(OUTPUT_MANIFEST_MARKER)) == written

    inputs = directory(tmp_path / "inputs")
    manifest = stage_in_manifest(tmp_path, "jobs/j1/result", RESULT)
    staged_in = run_program(tmp_path, env, "stage-in", "--manifest", str(manifest), "--root", str(inputs))

    assert staged_in.returncode == EXIT_OK, staged_in.stderr
    assert (inputs / "data").read_bytes() == RESULT


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    manifest = stage_in_manifest(tmp_path, "k", b"x")
    root = directory(tmp_path / "inputs")

    unset = run_program(tmp_path, {}, "stage-in", "--manifest", str(manifest), "--root", str(root))
    no_manifest = run_program(tmp_path, {"WML_STORAGE": str(tmp_path)}, "stage-in", "--root", str(root))

    half_keys = run_program(
        tmp_path,
        {"WML_STORAGE": str(tmp_path), "WML_S3_SECRET_ACCESS_KEY": "hunter2"},
        *("stage-in", "--manifest", str(manifest), "--root", str(root)),
    )

    assert unset.returncode == EXIT_USAGE
    assert "WML_STORAGE" in unset.stderr
    assert no_manifest.returncode == EXIT_USAGE
    assert half_keys.returncode == EXIT_USAGE
    assert "WML_S3_ACCESS_KEY_ID" in half_keys.stderr
    assert "hunter2" not in half_keys.stderr + half_keys.stdout


# -- exit codes (run in-process: the same entry, without a new interpreter) ------------------------------


def step(action: str, manifest: Path, root: Path, server: S3Server, **url: Any) -> int:
    return run_step(
        action, manifest, root, storage_url=server.url(**url), credentials=CREDENTIALS, attempts=2
    )


def test_missing_input_exits_3(tmp_path: Path, s3: S3Server) -> None:
    manifest = stage_in_manifest(tmp_path, "jobs/j1/never-uploaded", b"x")

    assert step(STAGE_IN, manifest, directory(tmp_path / "inputs"), s3) == EXIT_INPUT


def test_corrupt_input_exits_3_and_places_nothing(tmp_path: Path, s3: S3Server) -> None:
    s3.admin.put_object(Bucket=BUCKET, Key="jobs/j1/data", Body=b"tampered!")
    manifest = stage_in_manifest(tmp_path, "jobs/j1/data", b"original!")  # same size, other sha256
    inputs = directory(tmp_path / "inputs")

    assert step(STAGE_IN, manifest, inputs, s3) == EXIT_INPUT
    assert list(inputs.iterdir()) == []


def test_missing_required_output_exits_4_with_the_manifest_written(tmp_path: Path, s3: S3Server) -> None:
    outputs = directory(tmp_path / "outputs")
    (outputs / "result.txt").write_bytes(RESULT)
    manifest = stage_out_manifest(
        tmp_path,
        {"name": "result", "path": "result.txt", "key": "jobs/j1/result"},
        {"name": "plot", "path": "plot.png", "key": "jobs/j1/plot", "required": True},
    )

    assert step(STAGE_OUT, manifest, outputs, s3) == EXIT_OUTPUT_MISSING
    written = json.loads((tmp_path / "result" / "outputs.json").read_text())
    assert written["missing"] == ["plot"]
    assert [o["name"] for o in written["outputs"]] == ["result"]


def test_missing_optional_output_is_fine(tmp_path: Path, s3: S3Server) -> None:
    manifest = stage_out_manifest(
        tmp_path, {"name": "plot", "path": "plot.png", "key": "jobs/j1/plot", "required": False}
    )

    assert step(STAGE_OUT, manifest, directory(tmp_path / "outputs"), s3) == EXIT_OK


@pytest.mark.parametrize("action", [STAGE_IN, STAGE_OUT])
def test_storage_unavailable_exits_5(tmp_path: Path, s3: S3Server, action: str) -> None:
    outputs = directory(tmp_path / "root")
    (outputs / "result.txt").write_bytes(RESULT)
    manifest = (
        stage_in_manifest(tmp_path, "jobs/j1/data", b"x")
        if action == STAGE_IN
        else stage_out_manifest(tmp_path, {"name": "result", "path": "result.txt", "key": "jobs/j1/result"})
    )

    assert step(action, manifest, outputs, s3, endpoint=dead_endpoint(), max_attempts=1) == EXIT_STORAGE
    assert not (tmp_path / "result" / "outputs.json").exists()  # no manifest: the outputs are not stored


@pytest.mark.parametrize(
    ("document", "storage_url", "root_exists"),
    [
        ("{not json", "file:///tmp/x", True),
        ('{"inputs": [{"slot": "data"}]}', "file:///tmp/x", True),
        ('{"inputs": []}', "ftp://nowhere", True),
        ('{"inputs": []}', "s3://bucket?colour=blue", True),
        ('{"inputs": []}', "file:///tmp/x", False),
    ],
)
def test_bad_manifests_roots_and_storage_urls_exit_2(
    tmp_path: Path, document: str, storage_url: str, root_exists: bool
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(document, encoding="utf-8")
    root = directory(tmp_path / "inputs") if root_exists else tmp_path / "absent"

    code = run_step(
        STAGE_IN, manifest, root, storage_url=storage_url, credentials=StorageCredentials("a", "b")
    )

    assert code == EXIT_USAGE
