"""SQLite is the single-process embedded default: a second `wml serve` on the same data directory is refused
at start with a clear message (it would supervise the same jobs and reconcile them as lost), while
operator commands still run beside the server, and a server killed with SIGKILL leaves no stale lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import ServerProcess, free_port, token_from


def test_a_second_server_on_the_same_sqlite_database_is_refused(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path / "data")
    first.start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "wml.cli", "serve", "--port", str(free_port())],
            env=first.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        [line] = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert line.startswith("error: another process already serves the SQLite database ")
        assert "use PostgreSQL (WML_DATABASE_URL)" in line
        assert token_from(first.cli("consumers", "create", "acme", "--asset", "dummy-job"))  # beside it
        first.kill()  # SIGKILL: the kernel drops the lock with the process

        again = ServerProcess(tmp_path / "data")
        again.start()
        again.stop()
    finally:
        first.stop()
