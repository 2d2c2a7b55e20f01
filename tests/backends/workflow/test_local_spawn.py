"""The runner's spawn (:func:`os.posix_spawn`): the child gets the given
stdin, its own session, its output appended to a private file, the named signals at their default
action and nothing blocked; a program that does not exist raises FileNotFoundError."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from backends.workflow.host.jobdir import spawn

# The shell's signal masks are read first, with builtins only: once it has waited for a child, dash's mask
# says nothing about what it inherited (it blocks every signal while it waits, then clears its mask).
SCRIPT = (
    'while read -r line; do case $line in SigBlk:*|SigIgn:*) echo "$line";; esac; done </proc/$$/status; '
    "cat; echo; echo env=$FOO; ps -o sid= -p $$; echo to-stderr >&2"
)


def _signal_bits(text: str, field: str) -> int:
    line = next(line for line in text.splitlines() if line.startswith(field))
    return int(line.split()[1], 16)


def test_spawned_child_reads_stdin_runs_in_its_own_session_and_appends_its_output(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    output.write_text("before\n")
    read_end, write_end = os.pipe()
    os.write(write_end, b"from-stdin")
    os.close(write_end)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited as ignored unless reset
    try:
        pid = spawn(
            "/bin/sh",
            ["/bin/sh", "-c", SCRIPT],
            {"FOO": "bar", "PATH": "/usr/bin:/bin"},
            stdin=read_end,
            output=str(output),
            default_signals=(signal.SIGHUP, signal.SIGPIPE),
        )
    finally:
        signal.signal(signal.SIGHUP, previous)
        os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    text = output.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("Sig")]
    assert lines[:3] == ["before", "from-stdin", "env=bar"]
    assert int(lines[3]) == pid  # session leader of its own session
    assert _signal_bits(text, "SigBlk:") == 0
    assert not _signal_bits(text, "SigIgn:") & (1 << (signal.SIGHUP - 1) | 1 << (signal.SIGPIPE - 1))
    assert lines[-1] == "to-stderr"


def test_spawned_output_file_is_created_private(tmp_path: Path) -> None:
    output = tmp_path / "new.log"
    pid = spawn("/bin/true", ["/bin/true"], {}, stdin=0, output=str(output), default_signals=())
    assert os.waitpid(pid, 0)[1] == 0
    assert output.stat().st_mode & 0o777 == 0o600


def test_a_program_that_does_not_exist_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn("/nonexistent/program", ["x"], {}, stdin=0, output=str(tmp_path / "o"), default_signals=())
