"""What only the local backend promises: the worker's environment and limits, and how it starts and ends."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from backends.storage.file import FileStorageBackend
from backends.workflow.base import InputKind, RunPhase, WorkflowBackendError
from backends.workflow.host.jobdir import REMOVING_PREFIX
from backends.workflow.host.local.backend import LocalWorkflowBackend

PRINT_ENV = 'env | sort > "$WML_OUTPUT_RESULT"'


@pytest.fixture
async def backend(local_backend_factory) -> AsyncIterator[LocalWorkflowBackend]:
    instance = local_backend_factory()
    await instance.start()
    try:
        yield instance
    finally:
        await instance.close()


def shell(script: str) -> dict[str, list[str]]:
    return {"command": ["/bin/sh", "-c", script], "local_command": ["sh", "-c", script]}


async def run_to_end(backend: LocalWorkflowBackend, updates_of, run):
    updates = updates_of(backend)
    ref = await backend.submit(run)
    return await updates.terminal(ref)


async def test_worker_sees_a_clean_environment_with_the_slot_paths(
    backend, updates_of, make_run, upload, read_object, monkeypatch
) -> None:
    monkeypatch.setenv("WML_SERVER_SECRET", "must-not-leak")
    # GREETING is the run's own (the asset's env or a parameter): a file never overrides it.
    env_file = b"SOURCE=s3://in\nGREETING=from-the-file\n"
    keys = ("SOURCE", "GREETING")
    config = await upload("consumers/c1/files/cfg", env_file, "config", InputKind.ENV, "config.env", keys)
    data = await upload("consumers/c1/files/data", b"x", "data", InputKind.FILE, "data")
    run = make_run(inputs=(config, data), env={"GREETING": "hi"}, **shell(PRINT_ENV))

    final = await run_to_end(backend, updates_of, run)

    assert final.phase == RunPhase.SUCCEEDED
    env = dict(line.split("=", 1) for line in (await read_object(final.outputs[0].key)).decode().splitlines())
    assert env["SOURCE"] == "s3://in"
    assert env["GREETING"] == "hi"
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    # The job's directories as the sandbox shows them.
    assert env["HOME"] == "/tmp"
    assert env["WML_INPUTS_DIR"] == "/wml/inputs"
    assert env["WML_OUTPUTS_DIR"] == "/wml/outputs"
    assert env["WML_INPUT_CONFIG"] == "/wml/inputs/config.env"
    assert env["WML_INPUT_DATA"] == "/wml/inputs/data"
    assert env["WML_OUTPUT_RESULT"] == "/wml/outputs/result.txt"
    assert "WML_SERVER_SECRET" not in env


@pytest.mark.parametrize(
    "line",
    [
        b"BASH_ENV=/wml/inputs/config.env",
        b"PYTHONPATH=/tmp/evil",
        b"LD_PRELOAD=/tmp/evil.so",
        b"NODE_OPTIONS=--require=/tmp/evil.js",
        b"PATH=/tmp",
        b"WML_OUTPUTS_DIR=/elsewhere",
        b"SLEEPTIME=999999",
    ],
)
async def test_an_env_file_setting_a_key_its_slot_does_not_accept_never_reaches_a_worker(
    backend, local_work_dir, updates_of, make_run, upload, line
) -> None:
    env_file = b"SOURCE=s3://in\n" + line + b"\n"
    config = await upload("consumers/c1/files/cfg", env_file, "config", InputKind.ENV, "config.env")

    final = await run_to_end(backend, updates_of, make_run(inputs=(config,)))

    assert (final.phase, final.reason) == (RunPhase.ERROR, "INPUT_STAGING_FAILED")
    assert final.message is not None
    key = line.split(b"=")[0].decode()
    assert f"keys not accepted by this slot: {key} " in final.message
    assert line.split(b"=", 1)[1].decode() not in final.message  # names the key, never the value
    assert not (local_work_dir / final.ref / "runner.pid").exists()


async def test_dummy_job_reads_source_and_destination_from_an_env_file(
    backend, updates_of, make_run, upload, read_object
) -> None:
    env_file = b"SOURCE=s3://bucket/in\nDESTINATION=s3://bucket/out\n"
    config = await upload("consumers/c1/files/cfg2", env_file, "config", InputKind.ENV, "config.env")

    final = await run_to_end(backend, updates_of, make_run(inputs=(config,)))

    result = (await read_object(final.outputs[0].key)).decode()
    assert "SOURCE=s3://bucket/in" in result
    assert "DESTINATION=s3://bucket/out" in result


async def test_worker_runs_under_resource_limits(backend, updates_of, make_run, read_object) -> None:
    script = 'echo "$(ulimit -v) $(ulimit -n) $(ulimit -t)" > "$WML_OUTPUT_RESULT"'
    final = await run_to_end(backend, updates_of, make_run(run_timeout=10, **shell(script)))

    memory_kib, files, cpu_seconds = (await read_object(final.outputs[0].key)).decode().split()
    assert int(memory_kib) == 256 * 1024  # the run's 256 MiB, as RLIMIT_AS
    assert int(files) <= 1024
    assert int(cpu_seconds) == 10  # run_timeout x 1 core


async def test_run_without_a_local_command_cannot_start(backend, updates_of, make_run) -> None:
    final = await run_to_end(backend, updates_of, make_run(local_command=None))

    assert (final.phase, final.reason) == (RunPhase.ERROR, "SUBMIT_FAILED")
    assert final.message is not None
    assert "local command" in final.message


async def test_worker_program_that_does_not_exist_cannot_start(backend, updates_of, make_run) -> None:
    final = await run_to_end(backend, updates_of, make_run(local_command=["/no/such/program"]))

    assert (final.phase, final.reason) == (RunPhase.ERROR, "SUBMIT_FAILED")
    assert final.message is not None
    assert "/no/such/program" in final.message


async def test_worker_killed_by_a_signal_fails_with_128_plus_the_signal(
    backend, updates_of, make_run
) -> None:
    final = await run_to_end(backend, updates_of, make_run(**shell("kill -USR1 $$")))

    assert (final.phase, final.reason, final.exit_code) == (RunPhase.FAILED, "KILLED_BY_SIGNAL", 138)
    assert final.message is not None
    assert "SIGUSR1" in final.message


async def test_cancel_of_a_worker_that_ignores_sigterm_kills_it_after_the_grace_period(
    backend, local_work_dir, updates_of, make_run
) -> None:
    updates = updates_of(backend)
    ref = await backend.submit(make_run(**shell("trap '' TERM; echo ready; sleep 30")))
    await updates.next_for(ref, {RunPhase.RUNNING})
    runner = int((local_work_dir / ref / "runner.pid").read_text().split()[0])
    async with asyncio.timeout(5):
        while "ready" not in (local_work_dir / ref / "worker.log").read_text():
            await asyncio.sleep(0.05)

    await backend.cancel(ref)
    final = await updates.terminal(ref)

    assert final.phase == RunPhase.CANCELED
    with pytest.raises(ProcessLookupError):
        os.killpg(runner, 0)


async def test_cancel_during_stage_in_ends_the_run_before_it_starts(
    local_work_dir, storage, updates_of, make_run, upload
) -> None:
    data = await upload("consumers/c1/files/slow", b"slow bytes", "data", InputKind.FILE, "data")
    backend = LocalWorkflowBackend(local_work_dir, StalledStorage(storage), poll_interval=0.05)
    try:
        updates = updates_of(backend)
        ref = await backend.submit(make_run(inputs=(data,)))
        await asyncio.sleep(0.2)  # stage-in is now waiting on the storage
        await backend.cancel(ref)
        final = await updates.terminal(ref)
    finally:
        await backend.close()

    assert final.phase == RunPhase.CANCELED
    assert updates.phases(ref) == [RunPhase.INITIALIZING, RunPhase.CANCELED]
    assert not (local_work_dir / ref / "runner.pid").exists()


async def test_submitting_the_same_run_again_keeps_the_first(backend, updates_of, make_run) -> None:
    run = make_run()
    updates = updates_of(backend)
    assert await backend.submit(run) == run.job_id
    assert await backend.submit(run) == run.job_id

    final = await updates.terminal(run.job_id)
    assert final.phase == RunPhase.SUCCEEDED
    assert updates.phases(run.job_id).count(RunPhase.RUNNING) == 1


@pytest.mark.parametrize("job_id", ["../escape", "a/b", "", ".hidden"])
async def test_job_ids_that_are_not_plain_names_are_refused(backend, make_run, job_id) -> None:
    with pytest.raises(WorkflowBackendError):
        await backend.submit(make_run(job_id=job_id))


async def test_logs_of_an_unknown_ref_are_empty(backend) -> None:
    assert [line async for line in backend.logs("nothing-here", follow=True)] == []


def gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie left for its new parent to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


async def test_cleanup_of_a_running_job_forgets_it_at_once_and_kills_its_processes(
    local_backend_factory: Callable[[], LocalWorkflowBackend],
    local_work_dir: Path,
    updates_of: Any,
    make_run: Any,
) -> None:
    backend = local_backend_factory()
    await backend.start()
    ref = await backend.submit(make_run(**shell("sleep 30")))
    await updates_of(backend).next_for(ref, {RunPhase.RUNNING})
    job = local_work_dir / ref
    async with asyncio.timeout(5):
        while not (job / "worker.pid").exists():
            await asyncio.sleep(0.05)
    pids = [int((job / name).read_text().split()[0]) for name in ("runner.pid", "worker.pid")]

    await backend.cleanup(ref)
    forgotten = not job.exists()
    await backend.close()  # waits for the removal it left running in the background

    assert forgotten
    assert [gone(pid) for pid in pids] == [True, True]
    assert list(local_work_dir.iterdir()) == []


async def test_a_job_directory_whose_removal_a_restart_stopped_is_removed_by_the_next_instance(
    local_backend_factory: Callable[[], LocalWorkflowBackend], local_work_dir: Path
) -> None:
    leftover = local_work_dir / f"{REMOVING_PREFIX}j1.1"
    (leftover / "outputs").mkdir(parents=True)
    (leftover / "worker.log").write_text("from before the restart\n")

    backend = local_backend_factory()
    await backend.start()
    await backend.close()

    assert not leftover.exists()


class StalledStorage:
    """A storage whose reads never deliver, to hold a run in stage-in."""

    def __init__(self, inner: FileStorageBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    async def get(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""
