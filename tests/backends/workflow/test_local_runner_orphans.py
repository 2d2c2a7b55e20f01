"""The runner is its worker's subreaper: a process the worker leaves behind in a session of its own
(out of reach of the group kill) is adopted by the runner and killed before exit.json is written."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

from backends.workflow.host.jobdir import RUNNER_SCRIPT

# The worker starts `sleep` in a new session, records its pid, and exits at once.
WORKER = "setsid sleep 60 & echo $! > orphan.pid"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def test_a_process_the_worker_left_in_another_session_is_killed_with_the_job(tmp_path: Path) -> None:
    spec = {"argv": ["/bin/sh", "-c", WORKER], "env": {"PATH": "/usr/bin:/bin"}, "timeout": 30, "grace": 1}
    done = subprocess.run(
        [sys.executable, "-I", "-S", RUNNER_SCRIPT, str(tmp_path)],
        input=marshal.dumps(spec),
        start_new_session=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    orphan = int((tmp_path / "orphan.pid").read_text())
    try:
        assert json.loads((tmp_path / "exit.json").read_text())["exit_code"] == 0
        assert not _alive(orphan)
    finally:
        if _alive(orphan):
            os.kill(orphan, 9)
