"""A consumer's job cannot hurt the server, against a real ``wml serve`` process (issue 15).

- A local worker looks for the server's secrets: the data directory (database, signing key, admin token),
  every ``/proc/<pid>/environ`` (the server's holds WML_ADMIN_TOKEN), and finds none of them.
- Hostile archives (a 200 KiB ``.tar.gz`` carrying a 200 MiB GNU long name; a zip whose central directory
  holds 400 000 entries while its end record claims one) fail staging while the server's peak memory
  (VmHWM) stays where it was, and the message stored on the job stays short.

The data directory lives under /var/tmp, which the sandbox shows (unlike /tmp), so only its hiding and
its permissions keep a worker out.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import JOB_FIELDS, TERMINAL, kill_leftover_workers
from tests.support.bombs import long_name_tar_gz, zip_with_directory
from tests.support.catalog import standard_assets, write_catalog
from tests.support.processes import ADMIN, ServerProcess, token_from

MiB = 1024 * 1024
PROBE = """
for f in "$DATA_DIR/secret.key" "$DATA_DIR/admin-token" "$DATA_DIR/wml.db"; do cat "$f"; done
ls -A "$DATA_DIR" "$DATA_DIR/files" "$DATA_DIR/jobs"
for e in /proc/[0-9]*/environ; do tr '\\0' '\\n' < "$e"; done
""".strip()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wml-isolation-", dir="/var/tmp"))
    try:
        yield path / "data"
    finally:
        kill_leftover_workers(path / "data" / "jobs")
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    prober = {
        "id": "prober",
        "name": "Looks for the server's secrets",
        "image": "localhost/none",
        "env": {"DATA_DIR": str(data_dir)},
        "local": {"command": ["sh", "-c", f'{{ {PROBE}; }} 2>/dev/null | tee "$WML_OUTPUT_RESULT"; true']},
        "outputs": [{"name": "result", "path": "result.txt"}],
    }
    catalog = write_catalog(data_dir.parent / "catalog", [*standard_assets(), prober])
    proc = ServerProcess(data_dir, catalog_dir=str(catalog))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def upload(server: ServerProcess, token: str, content: bytes, name: str) -> str:
    operations = {
        "query": "mutation($f: Upload!, $n: String) {"
        " uploadFile(file: $f, name: $n) { ... on File { id } } }",
        "variables": {"f": None, "n": name},
    }
    resp = httpx.post(
        f"{server.url}/graphql",
        headers={"Authorization": f"Bearer {token}"},
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.f"]})},
        files={"0": (name, content, "application/octet-stream")},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    file_id: str = resp.json()["data"]["uploadFile"]["id"]
    return file_id


def run_job(server: ServerProcess, token: str, asset: str, inputs: dict[str, str]) -> dict[str, Any]:
    created = server.gql(
        token,
        "mutation($i: CreateJobInput!) {"
        " createJob(input: $i) { ... on Job { id } ... on Error { message } } }",
        {
            "i": {
                "assetId": asset,
                "inputs": [{"slot": s, "fileId": f} for s, f in inputs.items()],
                "parameters": {"SLEEPTIME": 0} if asset == "dummy-job" else {},
            }
        },
    )["createJob"]
    assert "id" in created, created
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = server.gql(
            token, f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}", {"id": created["id"]}
        )["job"]
        if job["state"] in TERMINAL:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {created['id']} did not end")


def fine_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("fine.txt", b"fine\n")
    return buffer.getvalue()


def peak_kib(server: ServerProcess) -> int:
    """The server process's peak resident memory (VmHWM), in KiB."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_a_local_worker_finds_nothing_of_the_servers_secrets(server: ServerProcess, data_dir: Path) -> None:
    token = token_from(server.cli("consumers", "create", "mallory", "--asset", "prober"))
    signing_key = (data_dir / "secret.key").read_text().strip()

    job = run_job(server, token, "prober", {})

    assert job["state"] == "COMPLETE", job
    found = httpx.get(job["outputs"][0]["downloadUrl"], timeout=30).text + (job["logTail"] or "")
    assert ADMIN not in found  # the server's environment (WML_ADMIN_TOKEN) is in no environ it sees
    assert signing_key not in found
    assert "SQLite format" not in found and "wml.db" not in found and "secret.key" not in found
    assert "WML_DATA_DIR" not in found  # no environ but its own job's
    # The data directory and its secrets are the server's alone, sandbox or not.
    assert (data_dir.stat().st_mode & 0o777, (data_dir / "secret.key").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    )
    assert (data_dir / "wml.db").stat().st_mode & 0o777 == 0o600


def test_archive_bombs_fail_staging_while_the_servers_memory_stays_flat(server: ServerProcess) -> None:
    token = token_from(server.cli("consumers", "create", "mallory", "--asset", "dummy-job"))
    # Warm up: a fine archive goes through every path the bombs take.
    fine = upload(server, token, fine_zip(), "fine.zip")
    assert run_job(server, token, "dummy-job", {"bundle": fine})["state"] == "COMPLETE"
    tar_bomb = long_name_tar_gz(200 * MiB)
    zip_bomb = zip_with_directory(400_000, claimed=1)
    assert len(tar_bomb) < 300 * 1024
    bombs = {
        "tar": upload(server, token, tar_bomb, "bomb.tar.gz"),
        "zip": upload(server, token, zip_bomb, "b.zip"),
    }
    baseline = peak_kib(server)

    jobs = {kind: run_job(server, token, "dummy-job", {"bundle": file_id}) for kind, file_id in bombs.items()}

    grown_mib = (peak_kib(server) - baseline) / 1024
    assert grown_mib < 32, grown_mib  # tarfile and zipfile in the server's process: hundreds of MiB
    for kind, expected in (("tar", "GNU long name header of 209715201 bytes"), ("zip", "more than 100000")):
        job = jobs[kind]
        assert (job["state"], job["reason"]) == ("SYSTEM_ERROR", "INPUT_STAGING_FAILED"), job
        assert expected in job["message"]
        assert len(job["message"].encode()) <= 4096
    events = server.gql(token, "{ jobs(first: 10) { nodes { id message } } }", {})["jobs"]["nodes"]
    assert all(len((e["message"] or "").encode()) <= 4096 for e in events)
