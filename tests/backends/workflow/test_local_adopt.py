"""The local backend survives a restart of the server: a new instance adopts what the old one started.

A "restart" here is ``close()`` of one backend instance and a new instance on the same work dir, in the
same process: close() stops watching but leaves the workers running, as a real shutdown does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from backends.workflow.base import RunPhase
from backends.workflow.host.jobdir import JobDir

ENTRYPOINT = Path(__file__).resolve().parents[3] / "dummy-job" / "entrypoint.sh"


async def wait_for_file(path: Path, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not path.exists():
            await asyncio.sleep(0.05)


async def test_new_instance_adopts_a_running_worker_and_reports_its_end(
    local_backend_factory, local_work_dir, updates_of, make_run, read_object
) -> None:
    first = local_backend_factory()
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "2"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()
    runner = int((local_work_dir / ref / "runner.pid").read_text().split()[0])
    os.killpg(runner, 0)  # close() left the worker running

    second = local_backend_factory()
    await second.start()
    try:
        updates = updates_of(second)
        [now] = await second.reconcile([ref])
        final = await updates.terminal(ref)
    finally:
        await second.close()

    assert now.phase == RunPhase.RUNNING
    assert (final.phase, final.exit_code) == (RunPhase.SUCCEEDED, 0)
    [output] = final.outputs
    assert b"dummy-job: SLEEPTIME=2" in await read_object(output.key)
    assert final.log is not None
    assert "progress 2/2" in (await read_object(final.log.key)).decode()


async def test_worker_that_ended_while_no_backend_ran_is_staged_out_by_reconcile(
    local_backend_factory, local_work_dir, updates_of, make_run
) -> None:
    first = local_backend_factory()
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "1"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()
    await wait_for_file(local_work_dir / ref / "exit.json")
    assert not (local_work_dir / ref / "final.json").exists()

    second = local_backend_factory()
    await second.start()
    try:
        [final] = await second.reconcile([ref])
        streamed = await updates_of(second).terminal(ref)
    finally:
        await second.close()

    assert final.phase == RunPhase.SUCCEEDED
    assert [o.name for o in final.outputs] == ["result"]
    assert streamed == final
    assert (local_work_dir / ref / "final.json").exists()


async def test_run_interrupted_during_stage_in_is_staged_again(
    local_backend_factory, local_work_dir, updates_of, make_run
) -> None:
    run = make_run()
    JobDir(local_work_dir / run.job_id).create(run)  # what submit leaves if the server dies right after

    backend = local_backend_factory()
    await backend.start()
    try:
        [now] = await backend.reconcile([run.job_id])
        final = await updates_of(backend).terminal(run.job_id)
    finally:
        await backend.close()

    assert now.phase == RunPhase.INITIALIZING
    assert final.phase == RunPhase.SUCCEEDED


async def test_runner_that_died_without_an_exit_status_is_reported_lost(
    local_backend_factory, local_work_dir, updates_of, make_run
) -> None:
    first = local_backend_factory()
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "30"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()
    runner = int((local_work_dir / ref / "runner.pid").read_text().split()[0])
    os.killpg(runner, signal.SIGKILL)  # as if the machine went down under it
    os.waitpid(runner, 0)

    second = local_backend_factory()
    await second.start()
    try:
        [final] = await second.reconcile([ref])
    finally:
        await second.close()

    assert (final.phase, final.reason) == (RunPhase.ERROR, "BACKEND_LOST")
    assert final.log is not None  # what the worker printed is still saved


async def test_cancel_after_a_restart_stops_the_adopted_worker(
    local_backend_factory, local_work_dir, updates_of, make_run
) -> None:
    first = local_backend_factory()
    await first.start()
    ref = await first.submit(make_run(env={"SLEEPTIME": "30"}))
    await updates_of(first).next_for(ref, {RunPhase.RUNNING})
    await first.close()
    runner = int((local_work_dir / ref / "runner.pid").read_text().split()[0])

    second = local_backend_factory()
    await second.start()
    try:
        updates = updates_of(second)
        await second.cancel(ref)
        [now] = await second.reconcile([ref])
        final = now if now.phase != RunPhase.RUNNING else await updates.terminal(ref)
    finally:
        await second.close()

    assert final.phase == RunPhase.CANCELED
    with pytest.raises(ProcessLookupError):
        os.killpg(runner, 0)


SERVER = """
import asyncio, sys
from pathlib import Path
from backends.storage.file import FileStorageBackend
from backends.workflow.base import JobRun, Resources, StagedOutput
from backends.workflow.host.local.backend import LocalWorkflowBackend

async def main(root, entrypoint):
    backend = LocalWorkflowBackend(Path(root) / "jobs", FileStorageBackend(Path(root) / "files"))
    run = JobRun("killed-1", "c1", "dummy-job", "img", None, None, {"SLEEPTIME": "2"}, Resources(),
                 (), (StagedOutput("result", "result.txt", True, "consumers/c1/files/r"),),
                 "consumers/c1/files/log", 30, ["sh", entrypoint])
    ref = await backend.submit(run)
    async for update in backend.updates():
        if update.phase == "RUNNING":
            print("REF", ref, flush=True)
            await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_worker_survives_a_sigkill_of_the_server(
    tmp_path, local_backend_factory, local_work_dir, updates_of
) -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(tmp_path), str(ENTRYPOINT), stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    async with asyncio.timeout(15):
        while not (line := (await server.stdout.readline()).decode()).startswith("REF "):
            assert line, "the server ended before its job ran"
    ref = line.split()[1]
    server.kill()
    await server.wait()

    backend = local_backend_factory()
    await backend.start()
    try:
        [now] = await backend.reconcile([ref])
        final = now if now.phase != RunPhase.RUNNING else await updates_of(backend).terminal(ref)
    finally:
        await backend.close()

    assert now.phase == RunPhase.RUNNING
    assert (final.phase, [o.name for o in final.outputs]) == (RunPhase.SUCCEEDED, ["result"])
