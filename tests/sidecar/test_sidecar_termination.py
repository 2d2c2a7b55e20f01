"""Stage-out writes its output manifest line as the container's termination message, whole or not at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.main import EXIT_OK, STAGE_OUT, run_step
from sidecar.manifest import OUTPUT_MANIFEST_MARKER
from sidecar.termination import (
    MAX_TERMINATION_MESSAGE_BYTES,
    TERMINATION_MESSAGE_ENV,
    TerminationMessage,
)


def stage_out_manifest(tmp_path: Path, outputs: list[dict[str, Any]]) -> Path:
    path = tmp_path / "stage-out.json"
    result = str(tmp_path / "result" / "outputs.json")
    path.write_text(json.dumps({"outputs": outputs, "result_path": result}))
    return path


def outputs_dir(tmp_path: Path) -> Path:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "result.txt").write_bytes(b"42\n")
    return outputs


RESULT: dict[str, Any] = {"name": "result", "path": "result.txt", "key": "jobs/j1/result"}


def test_the_program_writes_its_last_stdout_line_as_the_termination_message(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    manifest = stage_out_manifest(tmp_path, [RESULT])
    options = ["--manifest", str(manifest), "--root", str(outputs_dir(tmp_path))]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wml.cli",
            "sidecar",
            "stage-out",
            *options,
            "--termination-message",
            str(message),
        ],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WML_STORAGE": f"file://{tmp_path / 'store'}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == EXIT_OK, done.stderr
    last_line = done.stdout.strip().splitlines()[-1]
    assert message.read_text() == last_line
    assert json.loads(last_line.removeprefix(OUTPUT_MANIFEST_MARKER))["outputs"][0]["name"] == "result"


def test_the_path_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_MESSAGE_ENV, str(message))
    manifest = stage_out_manifest(tmp_path, [RESULT])

    code = run_step(STAGE_OUT, manifest, outputs_dir(tmp_path), storage_url=f"file://{tmp_path / 's'}")

    assert code == EXIT_OK
    written = json.loads(message.read_text().removeprefix(OUTPUT_MANIFEST_MARKER))
    assert written == json.loads((tmp_path / "result" / "outputs.json").read_text())


def test_a_manifest_over_the_limit_is_not_written_but_still_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = tmp_path / "termination-log"
    message.write_bytes(b"")  # as the kubelet creates it
    absent: list[dict[str, Any]] = [
        {"name": f"plot-{i:03}-{'x' * 60}", "path": f"p{i}", "key": f"k{i}", "required": False}
        for i in range(80)
    ]
    many = [RESULT, *absent]
    manifest = stage_out_manifest(tmp_path, many)

    code = run_step(
        STAGE_OUT,
        manifest,
        outputs_dir(tmp_path),
        storage_url=f"file://{tmp_path / 's'}",
        termination_message=message,
    )

    assert code == EXIT_OK
    [printed] = [x for x in capsys.readouterr().out.splitlines() if x.startswith(OUTPUT_MANIFEST_MARKER)]
    assert len(printed.encode()) > MAX_TERMINATION_MESSAGE_BYTES
    assert len(json.loads(printed.removeprefix(OUTPUT_MANIFEST_MARKER))["missing"]) == 80
    assert message.read_bytes() == b""  # never a cut manifest: the backend reads the log instead


def test_nothing_is_written_where_there_is_no_termination_message_file(tmp_path: Path) -> None:
    default_like = TerminationMessage(tmp_path / "termination-log")  # not created by a kubelet
    no_directory = TerminationMessage(tmp_path / "missing" / "termination-log", explicit=True)
    explicit = TerminationMessage.from_setting(tmp_path / "given", environ={})

    assert TerminationMessage.from_setting(None, environ={}) == TerminationMessage()
    assert not default_like.write("hello")
    assert not no_directory.write("hello")
    assert not (tmp_path / "termination-log").exists() and not (tmp_path / "missing").exists()
    assert explicit.write("x" * MAX_TERMINATION_MESSAGE_BYTES)  # exactly the limit fits
    assert not explicit.write("y" * (MAX_TERMINATION_MESSAGE_BYTES + 1))
    assert (tmp_path / "given").read_text() == "x" * MAX_TERMINATION_MESSAGE_BYTES
