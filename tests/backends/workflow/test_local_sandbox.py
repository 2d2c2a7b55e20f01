"""The local worker's sandbox (backends/workflow/host/local/sandbox.py): each test has a worker try what a
hostile one would, and asserts the denial, not the flag that should cause it."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from backends.storage.file import FileStorageBackend
from backends.workflow.base import Resources, RunNeeds, RunPhase
from backends.workflow.host.local.backend import LocalWorkflowBackend
from backends.workflow.host.local.sandbox import SandboxOptions, SandboxUnavailableError, command
from core.settings import Settings
from tests.backends.workflow.conftest import placed_inputs

# A directory as a server's data directory would be outside /tmp (which the sandbox replaces anyway):
# world-readable, so only the sandbox's hiding keeps a worker out of it.
VISIBLE_ROOT = Path("/var/tmp")


@pytest.fixture
def exposed_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wml-sandbox-test-", dir=VISIBLE_ROOT))
    path.chmod(0o755)
    (path / "secret.key").write_text("the-signing-key\n")
    (path / "secret.key").chmod(0o644)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def shell(script: str) -> dict[str, list[str]]:
    return {"command": ["/bin/sh", "-c", script], "local_command": ["sh", "-c", script]}


@pytest.fixture
def sandboxed(local_work_dir: Path, storage: FileStorageBackend) -> Callable[..., LocalWorkflowBackend]:
    def make(**options: object) -> LocalWorkflowBackend:
        sandbox = SandboxOptions(**options)  # type: ignore[arg-type]
        return LocalWorkflowBackend(
            local_work_dir, storage, poll_interval=0.05, kill_grace=1.0, sandbox=sandbox
        )

    return make


async def run(backend: LocalWorkflowBackend, updates_of, job) -> object:
    await backend.start()
    try:
        updates = updates_of(backend)
        ref = await backend.submit(job)
        return await updates.terminal(ref, timeout=30)
    finally:
        await backend.close()


async def result_of(final, read_object) -> str:
    assert final.phase == RunPhase.SUCCEEDED, final
    return (await read_object(final.outputs[0].key)).decode()


PROBE = """
out="$WML_OUTPUT_RESULT"
echo "uid $(id -u)" > "$out"
cat /etc/shadow >/dev/null 2>&1 && echo "read /etc/shadow" >> "$out"
cat "$EXPOSED/secret.key" >> "$out" 2>/dev/null
for dir in "$EXPOSED" "$WORK_DIR" "$STORAGE"; do ls -A "$dir" >> "$out" 2>/dev/null; done
touch /wml/inputs/x 2>/dev/null && echo "wrote inputs" >> "$out"
touch /var/tmp/wml-sandbox-escape 2>/dev/null && echo "wrote /var/tmp" >> "$out"
touch /etc/wml-sandbox-escape 2>/dev/null && echo "wrote /etc" >> "$out"
echo "processes $(ls -d /proc/[0-9]* | wc -l)" >> "$out"
touch /tmp/scratch && touch "$HOME/home" && echo "scratch ok" >> "$out"
"""


async def test_a_worker_reads_and_writes_nothing_but_its_own_job(
    sandboxed, updates_of, make_run, read_object, exposed_dir, local_work_dir, tmp_path
) -> None:
    backend = sandboxed(hidden=(exposed_dir,))
    env = {"EXPOSED": str(exposed_dir), "WORK_DIR": str(local_work_dir), "STORAGE": str(tmp_path / "files")}
    final = await run(backend, updates_of, make_run(env=env, **shell(PROBE)))

    lines = (await result_of(final, read_object)).splitlines()
    assert lines[0] != "uid 0"  # the server runs the tests as root; the worker has a uid of its own
    assert lines[1:-2] == []  # nothing read, listed or written outside its job
    processes = int(lines[-2].split()[1])
    assert processes <= 5  # bwrap's init, setpriv/env/sh, ls: only the job's own (the machine has hundreds)
    assert lines[-1] == "scratch ok"
    assert not Path("/var/tmp/wml-sandbox-escape").exists()
    assert not Path("/etc/wml-sandbox-escape").exists()


async def test_processes_the_worker_detaches_twice_die_with_the_job(sandboxed, updates_of, make_run) -> None:
    marker = f"3600.{uuid.uuid4().int % 10**9}"  # a sleep no one else runs
    # The middle process is still alive when the worker exits, so its child is nobody's orphan yet.
    script = (
        f"setsid sh -c 'setsid sleep {marker} & sleep {marker}' & sleep 0.5; echo done > $WML_OUTPUT_RESULT"
    )
    final = await run(sandboxed(), updates_of, make_run(**shell(script)))

    assert final.phase == RunPhase.SUCCEEDED, final
    assert await survivors(marker) == []


async def survivors(marker: str) -> list[int]:
    """Processes running ``sleep <marker>``, after giving dying ones a moment to go."""
    found: list[int] = []
    for _ in range(20):
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker.encode() in cmdline and state != "Z":
                found.append(int(entry.name))
        if not found:
            return found
        await asyncio.sleep(0.1)
    for pid in found:  # do not leave them behind, then report them
        os.kill(pid, 9)
    return found


async def test_output_beyond_the_log_limit_is_dropped_and_the_job_goes_on(
    sandboxed, updates_of, make_run, read_object
) -> None:
    script = "head -c 1000000 /dev/zero | tr '\\0' x; echo; echo after > \"$WML_OUTPUT_RESULT\""
    final = await run(sandboxed(max_log_size=64 * 1024), updates_of, make_run(**shell(script)))

    assert (await result_of(final, read_object)) == "after\n"
    assert final.log is not None
    log = await read_object(final.log.key)
    assert log.startswith(b"x" * 64 * 1024)
    assert log[64 * 1024 :] == b"\n[wml: the log reached its limit of 65536 bytes; the rest is dropped]\n"


LIMITS = """
out="$WML_OUTPUT_RESULT"
# dash gives up at the first fork that fails: count in a subshell how many got going, then free their
# places (shell builtins only, until they are gone) before the next fork.
(for i in $(seq 1 60); do sleep 5 & echo "$i" > /tmp/started; echo $! >> /tmp/pids; done) 2>/dev/null
read started < /tmp/started
echo "started $started" > "$out"
while read pid; do kill "$pid"; while [ -e "/proc/$pid" ]; do :; done; done < /tmp/pids
head -c 2000000 /dev/zero > /tmp/big; echo "head $?" >> "$out"
echo "size $(wc -c < /tmp/big)" >> "$out"
"""


async def test_a_worker_cannot_exceed_its_process_and_file_size_limits(
    sandboxed, updates_of, make_run, read_object
) -> None:
    backend = sandboxed(max_processes=20, max_file_size=1024 * 1024)
    # A job id of its own: the uid (and so the process count) is the job's, not another test's job-1.
    final = await run(backend, updates_of, make_run(job_id=f"limits-{uuid.uuid4().hex}", **shell(LIMITS)))

    started, wrote, size = (await result_of(final, read_object)).splitlines()
    assert int(started.split()[1]) < 20  # fork failed beyond RLIMIT_NPROC (counting the job's uid only)
    assert wrote == "head 153"  # 128 + SIGXFSZ
    assert size == f"size {1024 * 1024}"


NETWORK = 'bash -c "echo hi > /dev/tcp/127.0.0.1/$PORT" 2>/dev/null; echo "connect $?" > "$WML_OUTPUT_RESULT"'


@pytest.mark.parametrize(("allowed", "expected"), [(False, "connect 1"), (True, "connect 0")])
async def test_the_network_is_the_workers_own_loopback_unless_the_asset_allows_it(
    sandboxed, updates_of, make_run, read_object, allowed, expected
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        job = make_run(env={"PORT": str(port)}, local_network=allowed, **shell(NETWORK))
        final = await run(sandboxed(), updates_of, job)

    assert (await result_of(final, read_object)).strip() == expected


async def test_without_bubblewrap_the_backend_refuses_to_start(sandboxed) -> None:
    backend = sandboxed(bwrap="/no/such/bwrap")
    with pytest.raises(SandboxUnavailableError, match="WML_LOCAL_SANDBOX=off"):
        await backend.start()


async def test_with_the_sandbox_off_the_worker_runs_unconfined_and_a_warning_says_so(
    sandboxed, updates_of, make_run, read_object, local_work_dir
) -> None:
    backend = sandboxed(enabled=False)
    with capture_logs() as logs:
        final = await run(
            backend, updates_of, make_run(**shell('echo "$(id -u) $HOME" > "$WML_OUTPUT_RESULT"'))
        )

    assert any(entry["event"] == "local_sandbox_off" and entry["log_level"] == "warning" for entry in logs)
    assert (await result_of(final, read_object)) == f"0 {local_work_dir / final.ref}\n"


def test_the_sandbox_hides_the_given_paths_that_the_system_shows(tmp_path: Path) -> None:
    argv = command(
        SandboxOptions(),
        tmp_path,
        ["true"],
        hidden=(VISIBLE_ROOT, Path("/tmp/elsewhere"), Path("/no/such/dir")),
        uid=None,
        network=False,
    )
    hidden = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--tmpfs"]
    # /tmp is the job's own scratch directory in the sandbox, and a missing path needs no hiding.
    assert hidden == ["/dev/shm", "/run", str(VISIBLE_ROOT)]


def test_the_settings_choose_the_sandbox_and_what_it_hides(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        storage=f"file://{tmp_path / 'store'}",
        local_sandbox="off",
        local_sandbox_uid=2_000_000,
        local_max_processes=7,
        local_max_file_size=8,
        local_max_log_size=9,
    )

    options = SandboxOptions.from_settings(settings)

    assert options == SandboxOptions(
        enabled=False,
        uid_base=2_000_000,
        hidden=(tmp_path / "data", tmp_path / "store"),
        max_processes=7,
        max_file_size=8,
        max_log_size=9,
    )
    assert SandboxOptions.from_settings(Settings(data_dir=tmp_path)).enabled  # on unless turned off


async def test_the_assets_script_runs_where_the_sandbox_hides_its_directory(
    sandboxed, updates_of, make_run, read_object, tmp_path
) -> None:
    # A checkout under /tmp (the worker's /tmp is its scratch directory): the script alone is shown.
    script = tmp_path / "entrypoint.sh"
    script.write_text('echo "from the script; beside it: $(ls "$(dirname "$0")")" > "$WML_OUTPUT_RESULT"\n')
    script.chmod(0o644)
    (tmp_path / "secret.txt").write_text("not for the worker\n")
    tmp_path.chmod(0o755)
    job = make_run(command=["/bin/sh", str(script)], local_command=["sh", str(script)])

    final = await run(sandboxed(), updates_of, job)

    assert (await result_of(final, read_object)) == "from the script; beside it: entrypoint.sh\n"


PLACED = """
out="$WML_OUTPUT_RESULT"
{
  echo "outputs at $WML_OUTPUTS_DIR, data at $WML_INPUT_DATA, maps at $WML_INPUT_MAPS"
  cat /data/in.txt
  ls /home/carla/maps
  ls /home
  (echo replaced > /data/in.txt) 2>/dev/null && echo "wrote the input"
  touch /home/carla/escape 2>/dev/null && echo "wrote beside the placements"
  touch /data/escape 2>/dev/null && echo "wrote beside the input"
  true
} > "$out"
"""


async def test_inputs_and_outputs_are_bound_at_the_absolute_paths_the_asset_chose(
    sandboxed, updates_of, make_run, read_object, upload
) -> None:
    data, maps = await placed_inputs(upload)
    job = make_run(
        **shell(PLACED),
        inputs=(replace(data, worker_path="/data/in.txt"), replace(maps, worker_path="/home/carla/maps")),
        output_dir="/home/carla/rosbag",
    )

    final = await run(sandboxed(), updates_of, job)

    assert (await result_of(final, read_object)).splitlines() == [
        "outputs at /home/carla/rosbag, data at /data/in.txt, maps at /home/carla/maps",
        "input text",
        "town01.xodr",
        "carla",  # the host's /home is not shown: an empty directory holds the placements
    ]


async def test_the_local_backend_refuses_gpus_and_placements_without_its_sandbox(sandboxed) -> None:
    backend = sandboxed()

    assert "local backend has none" in (backend.refusal(RunNeeds(gpu=1)) or "")
    assert backend.refusal(RunNeeds(container_paths=True)) is None
    assert "sandbox" in (sandboxed(enabled=False).refusal(RunNeeds(container_paths=True)) or "")


async def test_a_gpu_run_that_reaches_the_local_backend_fails_instead_of_running_without(
    sandboxed, updates_of, make_run
) -> None:
    job = make_run(resources=Resources(cpu=1.0, memory=64 * 1024 * 1024, gpu=1))

    final = await run(sandboxed(), updates_of, job)

    assert (final.phase, final.reason) == (RunPhase.ERROR, "SUBMIT_FAILED")
    assert "local backend has none" in (final.message or "")
