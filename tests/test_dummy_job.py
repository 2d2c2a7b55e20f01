"""The example worker, dummy-job/entrypoint.sh, run directly: with ``sh`` and with ``busybox sh``.

Its image is busybox-based, so the busybox variant is the one that matters; when busybox is not
installed that variant is reported as skipped (never dropped silently) and only ``sh`` runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[1] / "dummy-job" / "entrypoint.sh"
BASE_ENV = {"PATH": os.defpath + ":/usr/local/bin", "LANG": "C.UTF-8"}


@pytest.fixture(params=["sh", "busybox"])
def shell(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "busybox":
        if shutil.which("busybox") is None:
            pytest.skip("busybox is not installed: only the sh variant ran")
        return ["busybox", "sh"]
    return ["sh"]


def run_job(shell: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shell, str(ENTRYPOINT)],
        env={**BASE_ENV, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_reads_its_inputs_and_writes_the_result(shell, tmp_path) -> None:
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    (inputs / "bundle" / "sub").mkdir(parents=True)
    (inputs / "data").write_bytes(b"first line of data\nsecond\n")
    (inputs / "bundle" / "a file.txt").write_text("a")
    (inputs / "bundle" / "sub" / "b.txt").write_text("b")
    env = {
        "WML_INPUTS_DIR": str(inputs),
        "WML_OUTPUTS_DIR": str(outputs),
        "WML_INPUT_DATA": str(inputs / "data"),
        "WML_INPUT_BUNDLE": str(inputs / "bundle"),
        "WML_OUTPUT_RESULT": str(outputs / "result.txt"),
        "SLEEPTIME": "1",
    }

    done = run_job(shell, env, tmp_path)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "data: data (26 bytes)" in lines
    assert "progress 1/1" in lines
    assert lines[-1] == "done"
    result = (outputs / "result.txt").read_text()
    assert "data: data (26 bytes)" in result
    assert "data first line: first line of data" in result
    assert "  a file.txt" in result
    assert "  sub/b.txt" in result


def test_result_goes_to_the_outputs_dir_without_an_output_path(shell, tmp_path) -> None:
    done = run_job(shell, {"WML_OUTPUTS_DIR": str(tmp_path / "out"), "SLEEPTIME": "0"}, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "SLEEPTIME=0 FAIL=0" in (tmp_path / "out" / "result.txt").read_text()


def test_fail_exits_with_that_code_after_writing_the_result(shell, tmp_path) -> None:
    result = tmp_path / "result.txt"
    done = run_job(shell, {"WML_OUTPUT_RESULT": str(result), "SLEEPTIME": "0", "FAIL": "3"}, tmp_path)

    assert done.returncode == 3
    assert "failing with exit code 3" in done.stderr
    assert result.exists()


def test_source_and_destination_come_from_the_environment(shell, tmp_path) -> None:
    result = tmp_path / "result.txt"
    env = {"WML_OUTPUT_RESULT": str(result), "SLEEPTIME": "0", "SOURCE": "s3://in", "DESTINATION": "s3://out"}

    done = run_job(shell, env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "SOURCE=s3://in" in done.stdout
    assert "DESTINATION=s3://out" in result.read_text()


def test_source_and_destination_come_from_the_env_file_input(shell, tmp_path) -> None:
    config = tmp_path / "config.env"
    config.write_text(
        '# original example\nSOURCE="s3://bucket/a b"\nexport DESTINATION=s3://bucket/out\nSLEEPTIME=1\n'
    )
    result = tmp_path / "result.txt"

    done = run_job(shell, {"WML_OUTPUT_RESULT": str(result), "WML_INPUT_CONFIG": str(config)}, tmp_path)

    assert done.returncode == 0, done.stderr
    assert "SOURCE=s3://bucket/a b" in result.read_text()
    assert "DESTINATION=s3://bucket/out" in result.read_text()
    assert "progress 1/2" in done.stdout  # a parameter never comes from the file: SLEEPTIME stays 2


def test_bad_parameters_are_refused(shell, tmp_path) -> None:
    done = run_job(shell, {"WML_OUTPUTS_DIR": str(tmp_path), "SLEEPTIME": "soon"}, tmp_path)

    assert done.returncode == 2
    assert "SLEEPTIME must be a non-negative integer" in done.stderr


def test_sigterm_ends_it_promptly_with_143(shell, tmp_path) -> None:
    proc = subprocess.Popen(
        [*shell, str(ENTRYPOINT)],
        env={**BASE_ENV, "WML_OUTPUTS_DIR": str(tmp_path), "SLEEPTIME": "30"},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("dummy-job:")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    assert proc.wait(timeout=5) == 143
    assert time.monotonic() - started < 1  # not after the current sleep
    assert "terminated" in proc.stdout.read()
    proc.stdout.close()


def test_absolute_source_and_destination_move_like_the_original(shell, tmp_path) -> None:
    source, destination = tmp_path / "os-release", tmp_path / "output" / "result"
    source.write_text('NAME="test"\n')
    destination.parent.mkdir()
    env = {"SOURCE": str(source), "DESTINATION": str(destination), "SLEEPTIME": "1"}

    done = run_job(shell, env, tmp_path)

    assert done.returncode == 0, done.stderr
    assert destination.read_text() == 'NAME="test"\n' and not source.exists()
    lines = done.stdout.splitlines()
    assert "progress 1/1" in lines
    assert str(source) in lines[-1] and str(destination) in lines[-1]  # mv -v says what it moved


def test_the_original_mode_requires_both_and_an_existing_source(shell, tmp_path) -> None:
    only_source = run_job(shell, {"SOURCE": str(tmp_path / "x"), "SLEEPTIME": "0"}, tmp_path)
    missing = run_job(shell, {"SOURCE": "/nonexistent", "DESTINATION": str(tmp_path / "r")}, tmp_path)

    assert only_source.returncode == 1 and "SOURCE or DESTINATION unset" in only_source.stderr
    assert missing.returncode == 1 and "does not exist" in missing.stderr
