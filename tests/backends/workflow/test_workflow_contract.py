"""The contract every workflow backend passes, with real runs of the dummy job (fixtures in conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from backends.workflow.base import InputKind, RunPhase, StagedOutput, WorkflowBackend
from core.backend_mapping import in_order


async def test_successful_run_uploads_its_output_and_log(
    workflow_backend: WorkflowBackend, updates, make_run, upload, read_object
) -> None:
    content = b"hello dataspace\nsecond line\n"
    data = await upload("consumers/c1/files/in-1", content, "data", InputKind.FILE, "data")
    run = make_run(inputs=(data,))

    ref = await workflow_backend.submit(run)
    final = await updates.terminal(ref)

    assert updates.phases(ref) == [RunPhase.INITIALIZING, RunPhase.RUNNING, RunPhase.SUCCEEDED]
    assert (final.reason, final.exit_code) == (None, 0)
    [output] = final.outputs
    content = await read_object(output.key)
    assert output.name == "result"
    assert output.key == run.outputs[0].key
    assert (output.size, output.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert b"data: data (28 bytes)" in content
    assert b"data first line: hello dataspace" in content
    assert final.log is not None
    assert final.log.key == run.log_key
    log = await read_object(final.log.key)
    assert b"result written to" in log
    assert final.log_tail is not None
    assert final.log_tail.endswith("done")


async def test_nonzero_exit_fails_with_the_exit_code_and_the_log_tail(
    workflow_backend: WorkflowBackend, updates, make_run, backend_traits
) -> None:
    ref = await workflow_backend.submit(make_run(env={"SLEEPTIME": "0", "FAIL": "3"}))
    final = await updates.terminal(ref)

    assert (final.phase, final.reason, final.exit_code) == (RunPhase.FAILED, "NONZERO_EXIT", 3)
    assert final.log_tail is not None
    assert "failing with exit code 3 as asked" in final.log_tail
    assert final.log is not None
    # The result is written before the failing exit, and uploaded for the consumer to inspect where the
    # backend runs stage-out after a failed worker.
    assert [o.name for o in final.outputs] == (["result"] if backend_traits.outputs_after_failure else [])


async def test_cancel_of_a_running_job_stops_its_whole_process_group(
    workflow_backend: WorkflowBackend, updates, make_run, process_group
) -> None:
    ref = await workflow_backend.submit(make_run(env={"SLEEPTIME": "30"}))
    await updates.next_for(ref, {RunPhase.RUNNING})
    group = process_group(ref)

    await workflow_backend.cancel(ref)
    final = await updates.terminal(ref)

    assert final.phase == RunPhase.CANCELED
    assert final.outputs == ()
    assert final.log is not None  # the log is still saved
    if group is not None:
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
    await workflow_backend.cancel(ref)  # idempotent once finished


async def test_cancel_of_an_unknown_ref_is_a_no_op(workflow_backend: WorkflowBackend) -> None:
    await workflow_backend.cancel("no-such-job")


async def test_run_timeout_fails_the_run(workflow_backend: WorkflowBackend, updates, make_run) -> None:
    ref = await workflow_backend.submit(make_run(env={"SLEEPTIME": "30"}, run_timeout=1))
    final = await updates.terminal(ref)

    assert (final.phase, final.reason) == (RunPhase.FAILED, "RUN_TIMEOUT")
    assert final.log_tail is not None
    assert "terminated" in final.log_tail


async def test_missing_required_output_fails_the_run(
    workflow_backend: WorkflowBackend, updates, make_run
) -> None:
    optional = StagedOutput("extra", "extra.txt", False, "consumers/c1/files/extra-1")
    run = make_run(
        command=["/bin/sh", "-c", "echo writing nothing"],
        local_command=["sh", "-c", "echo writing nothing"],
        outputs=(*make_run().outputs, optional),
    )
    ref = await workflow_backend.submit(run)
    final = await updates.terminal(ref)

    assert (final.phase, final.reason, final.exit_code) == (RunPhase.FAILED, "OUTPUT_MISSING", 0)
    assert final.message is not None
    assert "result" in final.message
    assert "extra" not in final.message  # optional outputs may be missing


async def test_input_with_a_wrong_sha256_fails_staging(
    workflow_backend: WorkflowBackend, updates, make_run, upload
) -> None:
    data = await upload("consumers/c1/files/in-2", b"payload", "data", InputKind.FILE, "data")
    corrupt = type(data)(data.slot, data.kind, data.path, data.key, data.size, "0" * 64)
    ref = await workflow_backend.submit(make_run(inputs=(corrupt,)))
    final = await updates.terminal(ref)

    assert (final.phase, final.reason) == (RunPhase.ERROR, "INPUT_STAGING_FAILED")
    assert final.message is not None
    assert "sha256" in final.message
    assert RunPhase.RUNNING not in updates.phases(ref)


async def test_reconcile_of_an_unknown_ref_reports_it_lost(workflow_backend: WorkflowBackend) -> None:
    [update] = await workflow_backend.reconcile(["never-submitted"])

    assert (update.ref, update.phase, update.reason) == ("never-submitted", RunPhase.ERROR, "BACKEND_LOST")


async def test_the_reference_is_named_before_submit_and_unknown_until_the_run_is_submitted(
    workflow_backend: WorkflowBackend, updates, make_run
) -> None:
    run = make_run()
    ref = workflow_backend.reference(run.job_id, run.consumer_id)
    # What a restart finds when the service stopped after storing the reference, before submit.
    [before] = await workflow_backend.reconcile([ref])
    assert (before.ref, before.phase, before.reason) == (ref, RunPhase.ERROR, "BACKEND_LOST")

    assert await workflow_backend.submit(run) == ref
    final = await updates.terminal(ref)
    assert final.phase == RunPhase.SUCCEEDED


async def test_reconcile_of_a_finished_run_repeats_its_terminal_update(
    workflow_backend: WorkflowBackend, updates, make_run
) -> None:
    ref = await workflow_backend.submit(make_run(env={"SLEEPTIME": "0", "FAIL": "4"}))
    final = await updates.terminal(ref)

    [again, lost] = await workflow_backend.reconcile([ref, "gone"])

    assert again == final
    assert (lost.ref, lost.reason) == ("gone", "BACKEND_LOST")


async def test_cleanup_forgets_the_run(workflow_backend: WorkflowBackend, updates, make_run) -> None:
    ref = await workflow_backend.submit(make_run())
    await updates.terminal(ref)

    await workflow_backend.cleanup(ref)
    await workflow_backend.cleanup(ref)  # twice is fine

    [update] = await workflow_backend.reconcile([ref])
    assert update.reason == "BACKEND_LOST"


async def test_following_logs_yields_progress_while_the_job_runs(
    workflow_backend: WorkflowBackend, updates, make_run
) -> None:
    ref = await workflow_backend.submit(make_run(env={"SLEEPTIME": "2"}))
    await updates.next_for(ref, {RunPhase.RUNNING})

    lines: list[str] = []
    phase_at_first_progress = None
    async with asyncio.timeout(15):
        async for line in workflow_backend.logs(ref, follow=True):
            lines.append(line)
            if line.startswith("progress") and phase_at_first_progress is None:
                [now] = await workflow_backend.reconcile([ref])
                phase_at_first_progress = now.phase

    assert phase_at_first_progress == RunPhase.RUNNING
    assert "progress 1/2" in lines
    assert "progress 2/2" in lines
    assert lines[-1] == "done"
    await updates.terminal(ref)
    # Without follow: what is there, then the end.
    assert [line async for line in workflow_backend.logs(ref, follow=False)] == lines


@pytest.mark.parametrize(("first", "outcome"), [("exit 0", RunPhase.SUCCEEDED), ("exit 4", RunPhase.FAILED)])
async def test_a_jobs_own_commands_run_in_order_in_one_worker_and_stop_at_the_first_failure(
    workflow_backend: WorkflowBackend, updates, make_run, read_object, first: str, outcome: RunPhase
) -> None:
    steps = [
        ["sh", "-c", f'echo one > "$WML_OUTPUT_RESULT"; {first}'],
        ["sh", "-c", 'echo two >> "$WML_OUTPUT_RESULT"'],
    ]
    run = make_run(
        command=in_order(steps), args=[], local_command=in_order(steps, "sh"), consumer_command=True
    )
    final = await updates.terminal(await workflow_backend.submit(run))

    assert final.phase == outcome, final
    if outcome == RunPhase.SUCCEEDED:
        [output] = final.outputs
        assert await read_object(output.key) == b"one\ntwo\n"
    else:
        assert final.exit_code == 4  # and the second command never ran
        for output in final.outputs:
            assert await read_object(output.key) == b"one\n"
