"""The consumer's and the operator's commands (``wml upload``, ``run``, ``download``, ``jobs``, ``logs``,
``cancel``, ``consumers``, ``grants``, ...) driven as a user runs them, against ``wml serve`` running as a
real process, with ``--json`` output parsed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ADMIN, ServerProcess, free_port, token_from


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.out.splitlines()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("client-commands"), log_level="WARNING")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def wml(server: ServerProcess, *args: str, token: str | None = None, cwd: Path | None = None) -> Done:
    """``wml ARGS`` with the server's URL in WML_URL and ``token`` in WML_TOKEN."""
    env = {**server.env, "WML_URL": server.url}
    if token is not None:
        env["WML_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "wml.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def consumer(server: ServerProcess, name: str) -> str:
    return token_from(server.cli("consumers", "create", name, "--asset", "dummy-job"))


def consumer_id(server: ServerProcess, token: str) -> str:
    me: dict[str, str] = server.gql(token, "{ me { id } }")["me"]
    return me["id"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_consumer_uploads_runs_follows_downloads_and_lists_with_the_cli_alone(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = consumer(server, "walker")
    data = tmp_path / "input.txt"
    data.write_bytes(b"some input\n" * 100)

    uploaded = wml(server, "upload", str(data), "--json", token=token).json()
    assert [(f["name"], f["size"], f["sha256"]) for f in uploaded] == [
        ("input.txt", 1100, sha256(data.read_bytes()))
    ]
    # A large file goes through createUpload and a PUT of its bytes (forced here with --large-from 0).
    big = wml(server, "upload", str(data), "--large-from", "0", "--json", token=token).json()
    assert big[0]["sha256"] == sha256(data.read_bytes()) and big[0]["id"] != uploaded[0]["id"]

    run = wml(
        server, "run", "dummy-job", "--input", f"data={data}", "--param", "SLEEPTIME=1", "--follow", "--json",
        token=token,
    )  # fmt: skip
    assert run.code == 0, run.err
    lines = run.json_lines()
    job_id = lines[0]["job"]["id"]
    states = [line["event"]["state"] for line in lines if "event" in line]
    assert states[0] == "QUEUED" and states[-1] == "COMPLETE", states
    assert "done" in [line["log"] for line in lines if "log" in line]

    saved = wml(server, "download", job_id, "-o", str(tmp_path / "out"), "--json", token=token).json()
    assert [s["name"] for s in saved] == ["result.txt"]
    result = (tmp_path / "out" / "result.txt").read_bytes()
    assert sha256(result) == saved[0]["sha256"] and b"SLEEPTIME=1" in result
    assert not saved[0]["resumed"]

    jobs = wml(server, "jobs", "--json", token=token).json()
    assert [(j["id"], j["state"]) for j in jobs] == [(job_id, "COMPLETE")]
    assert wml(server, "jobs", "--state", "RUNNING", "--json", token=token).json() == []
    table = wml(server, "jobs", token=token).out.splitlines()  # for people: a table, whole rows in a pipe
    assert table[0].split()[:3] == ["JOB", "ASSET", "STATE"] and table[1].split()[:3] == [
        job_id,
        "dummy-job",
        "COMPLETE",
    ]
    detail = wml(server, "job", job_id, "--json", token=token).json()
    assert detail["inputs"][0]["slot"] == "data" and detail["parameters"]["SLEEPTIME"] == 1

    logged = wml(server, "logs", job_id, "--json", token=token).json_lines()
    assert logged[-1]["text"] == "done" and [line["seq"] for line in logged] == list(
        range(1, len(logged) + 1)
    )

    started = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=60", "--json", token=token).json()
    canceled = wml(server, "cancel", started["id"], "--json", token=token).json()
    assert canceled["state"] in {"CANCELING", "CANCELED"}
    follow = wml(server, "logs", started["id"], "--follow", token=token)
    assert follow.code == 1, follow.err  # the job ended CANCELED

    files = wml(server, "files", "--json", token=token).json()
    assert {uploaded[0]["id"], big[0]["id"]} <= {f["id"] for f in files}
    removed = wml(server, "rm", big[0]["id"], "--json", token=token).json()
    assert removed == [{"__typename": "DeletedFile", "id": big[0]["id"]}]
    assert big[0]["id"] not in {f["id"] for f in wml(server, "files", "--json", token=token).json()}


def test_download_resumes_a_partial_file_and_refuses_bytes_that_do_not_match(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = consumer(server, "resumer")
    run = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=0", "--follow", "--json", token=token)
    job_id = run.json_lines()[0]["job"]["id"]
    first = wml(server, "download", job_id, "-o", str(tmp_path / "a"), "--json", token=token).json()[0]
    whole = (tmp_path / "a" / "result.txt").read_bytes()

    # A .part left by an interrupted download: only the rest is fetched (Range), and the whole verified.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "result.txt.part").write_bytes(whole[:10])
    again = wml(server, "download", job_id, "-o", str(tmp_path / "b"), "--json", token=token).json()[0]
    assert again["resumed"] and (tmp_path / "b" / "result.txt").read_bytes() == whole
    assert not (tmp_path / "b" / "result.txt.part").exists()

    # A .part that is not the file's prefix: the sha256 check catches it, and the .part goes.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.txt.part").write_bytes(b"X" * 10)
    bad = wml(server, "download", job_id, "-o", str(tmp_path / "c"), token=token)
    assert bad.code == 5 and bad.err.startswith("error: CHECKSUM_MISMATCH: ") and bad.out == ""
    assert not (tmp_path / "c" / "result.txt").exists()
    assert not (tmp_path / "c" / "result.txt.part").exists()
    assert first["sha256"] == sha256(whole)


def test_a_job_that_fails_makes_run_follow_exit_1(server: ServerProcess) -> None:
    token = consumer(server, "failing")
    run = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=0", "-p", "FAIL=3", "--follow", token=token)
    assert run.code == 1, run.err
    assert "job is EXECUTOR_ERROR (NONZERO_EXIT), exit code 3" in run.out


def test_run_names_and_tags_a_job_and_a_bad_tag_is_a_usage_error(server: ServerProcess) -> None:
    token = consumer(server, "tagger")
    done = wml(
        server,
        "run",
        "dummy-job",
        "-p",
        "SLEEPTIME=0",
        "--name",
        "lane-1",
        "--tag",
        "sample=a",
        "--tag",
        "run=7",
        "--json",
        token=token,
    )
    assert done.code == 0, done.err
    job = done.json()
    assert job["name"] == "lane-1"
    assert sorted((t["key"], t["value"]) for t in job["tags"]) == [("run", "7"), ("sample", "a")]
    shown = wml(server, "job", job["id"], "--json", token=token)
    assert shown.json()["name"] == "lane-1"
    bad = wml(server, "run", "dummy-job", "--tag", "novalue", token=token)
    assert bad.code == 2 and "--tag must be NAME=VALUE" in bad.err


def test_errors_are_one_line_with_their_code_and_a_documented_exit_code(
    server: ServerProcess, tmp_path: Path
) -> None:
    token = consumer(server, "mistaken")
    unknown = wml(server, "job", "j_00000000000000000000000000000000", token=token)
    assert (unknown.code, unknown.err) == (
        3,
        "error: NOT_FOUND: job j_00000000000000000000000000000000 not found\n",
    )
    refused = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=-1", "--json", token=token)
    assert refused.code == 3
    assert json.loads(refused.err)["error"]["code"] == "VALIDATION"
    bad_token = wml(server, "jobs", token="wml_not-a-token")
    assert (bad_token.code, bad_token.err.split(":")[:2]) == (3, ["error", " UNAUTHENTICATED"])
    no_token = wml(server, "jobs")
    assert (no_token.code, no_token.err) == (2, "error: USAGE: no token: pass --token or set WML_TOKEN\n")
    missing = wml(server, "upload", str(tmp_path / "nothing"), token=token)
    assert (missing.code, missing.err.strip()) == (2, f"error: USAGE: no such file: {tmp_path / 'nothing'}")
    down = wml(server, "jobs", "--url", f"http://127.0.0.1:{free_port()}", token=token)
    assert down.code == 4 and down.err.startswith("error: UNREACHABLE: ")
    running = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=60", token=token).out.strip()
    early = wml(server, "download", running, "-o", str(tmp_path), token=token)
    assert (early.code, early.err.split(":")[1]) == (3, " CONFLICT")
    assert wml(server, "cancel", running, token=token).code == 0
    for done in (unknown, refused, bad_token, no_token, missing, down, early):
        assert "Traceback" not in done.err and done.err.count("\n") == 1


def test_the_operator_lists_and_revokes_consumers_and_sees_grants_and_all_jobs(server: ServerProcess) -> None:
    token = consumer(server, "revocable")
    cid = consumer_id(server, token)
    job = wml(server, "run", "dummy-job", "-p", "SLEEPTIME=0", "--follow", "--json", token=token)
    job_id = job.json_lines()[0]["job"]["id"]

    listed = wml(server, "consumers", "list", "--json", token=ADMIN).json()
    mine = next(c for c in listed if c["id"] == cid)
    assert (mine["name"], mine["activeGrants"]) == ("revocable", 1)
    tokens = wml(server, "consumers", "tokens", cid, "--json", token=ADMIN).json()
    assert [(g["assetId"], g["state"]) for g in tokens] == [("dummy-job", "ACTIVE")]
    grants = wml(server, "grants", "--consumer", cid, "--state", "ACTIVE", "--json", token=ADMIN).json()
    assert [g["id"] for g in grants] == [tokens[0]["id"]]
    every = wml(server, "jobs", "--all", "--json", token=ADMIN).json()
    assert next(j["consumerId"] for j in every if j["id"] == job_id) == cid

    # None of it with a consumer's token.
    operator_only = [["consumers", "list"], ["consumers", "tokens", cid], ["consumers", "revoke", cid]]
    for args in [*operator_only, ["grants"], ["jobs", "--all"]]:
        refused = wml(server, *args, token=token)
        assert (refused.code, refused.err.split(":")[1]) == (3, " PERMISSION_DENIED"), (args, refused.err)

    revoked = wml(server, "consumers", "revoke", cid, "--json", token=ADMIN).json()
    assert [g["state"] for g in revoked["grants"]] == ["DEPROVISIONED"]
    assert wml(server, "jobs", token=token).code == 3  # the token stopped working
    again = wml(server, "grants", "--consumer", cid, "--state", "ACTIVE", "--json", token=ADMIN).json()
    assert again == []
    # create, over the API (a URL is given): its token works at once
    created = wml(
        server, "consumers", "create", "remote", "--asset", "dummy-job", "--json", token=ADMIN
    ).json()
    assert created["consumer"]["name"] == "remote"
    assert wml(server, "jobs", "--json", token=created["tokens"][0]["token"]).json() == []
    assert wml(server, "consumers", "create", "nope", "--asset", "dummy-job", token=token).code == 3
    unknown = wml(server, "consumers", "revoke", "c_unknown", token=ADMIN)
    assert unknown.code == 3 and unknown.err.startswith("error: NOT_FOUND: ")


def test_version_and_the_exit_codes_are_in_the_help() -> None:
    done = subprocess.run([sys.executable, "-m", "wml.cli", "--version"], capture_output=True, text=True)
    assert done.stdout.startswith("wml 0.") and done.returncode == 0
    help_text = subprocess.run([sys.executable, "-m", "wml.cli", "--help"], capture_output=True, text=True)
    assert "exit codes: 0 done" in " ".join(help_text.stdout.split())


def test_upload_shows_a_progress_bar_on_a_terminal(server: ServerProcess, tmp_path: Path) -> None:
    """On a terminal (stderr is a pseudo-terminal here) an upload draws a rich progress bar with the file's
    name and size; through a pipe (every other test) stderr stays clean."""
    token = consumer(server, "watcher")
    data = tmp_path / "big-input.bin"
    data.write_bytes(b"x" * 300_000)
    primary, replica = os.openpty()
    env = {**server.env, "WML_URL": server.url, "WML_TOKEN": token, "COLUMNS": "120"}
    done = subprocess.run(
        [sys.executable, "-m", "wml.cli", "upload", str(data)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=replica,
        timeout=120,
    )
    os.close(replica)
    drawn = b""
    with contextlib.suppress(OSError):  # EIO once everything written has been read
        while chunk := os.read(primary, 65536):
            drawn += chunk
    os.close(primary)
    assert done.returncode == 0
    text = drawn.decode(errors="replace")
    assert "big-input.bin" in text and "━" in text and "300.0" in text, text
