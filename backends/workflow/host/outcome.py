"""How the end of a local run maps onto its terminal :class:`BackendUpdate`.

The first row that matches wins:

================================================  ==================================================
stage-out failed                                  ERROR / OUTPUT_UPLOAD_FAILED
cancel asked, and the runner saw the SIGTERM      CANCELED (only the log was uploaded)
(or the runner is gone)
runner gone without an exit status                ERROR / BACKEND_LOST
the worker could not be started                   ERROR / SUBMIT_FAILED
run timeout passed                                FAILED / RUN_TIMEOUT
SIGKILL that neither runner nor backend sent      FAILED / OOM_KILLED (a best guess), exit code 137
killed by another signal                          FAILED / KILLED_BY_SIGNAL, exit code 128 + signal
non-zero exit                                     FAILED / NONZERO_EXIT
exit 0, a required output missing                 FAILED / OUTPUT_MISSING
exit 0                                            SUCCEEDED
================================================  ==================================================

A cancel that lands after the worker already ended on its own does not count: the real outcome wins.
"""

from __future__ import annotations

import signal
from dataclasses import replace

from backends.workflow.base import BackendUpdate, JobRun, OutputRecord, RunPhase
from backends.workflow.host.jobdir import ExitStatus
from sidecar.manifest import OutputManifest, UploadedObject


def exit_code(status: ExitStatus | None) -> int | None:
    if status is None:
        return None
    if status.signal is not None:
        return 128 + status.signal
    return status.exit_code


def upload_failed(run: JobRun, status: ExitStatus | None, error: Exception) -> BackendUpdate:
    message = f"uploading the results failed: {error}"
    return BackendUpdate(run.job_id, RunPhase.ERROR, "OUTPUT_UPLOAD_FAILED", message, exit_code(status))


def outcome(
    run: JobRun, status: ExitStatus | None, canceled: bool, uploaded: OutputManifest
) -> BackendUpdate:
    """The terminal update for a run whose stage-out succeeded (see the table in the module docstring)."""
    ref, code = run.job_id, exit_code(status)
    result = BackendUpdate(ref, RunPhase.SUCCEEDED, exit_code=code)
    if canceled:
        result = BackendUpdate(ref, RunPhase.CANCELED, message="canceled on request", exit_code=code)
    elif status is None:
        result = BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the worker's runner vanished")
    elif status.error is not None:
        result = BackendUpdate(ref, RunPhase.ERROR, "SUBMIT_FAILED", status.error)
    elif status.timed_out:
        message = f"the worker ran longer than its {run.run_timeout} s timeout"
        result = BackendUpdate(ref, RunPhase.FAILED, "RUN_TIMEOUT", message, code)
    elif status.oom:
        result = BackendUpdate(
            ref, RunPhase.FAILED, "OOM_KILLED", "the worker was killed (out of memory?)", code
        )
    elif status.signal is not None:
        message = f"the worker was killed by {_signal_name(status.signal)}"
        result = BackendUpdate(ref, RunPhase.FAILED, "KILLED_BY_SIGNAL", message, code)
    elif code != 0:
        result = BackendUpdate(ref, RunPhase.FAILED, "NONZERO_EXIT", f"the worker exited with {code}", code)
    else:
        required = {o.name for o in run.outputs if o.required}
        missing = sorted(required.intersection(uploaded.missing))
        if missing:
            message = f"required outputs missing: {', '.join(missing)}"
            result = BackendUpdate(ref, RunPhase.FAILED, "OUTPUT_MISSING", message, code)
    return replace(result, outputs=_records(uploaded), log=_record(uploaded.log))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _records(uploaded: OutputManifest) -> tuple[OutputRecord, ...]:
    return tuple(OutputRecord(o.name, o.key, o.size, o.sha256) for o in uploaded.outputs)


def _record(obj: UploadedObject | None) -> OutputRecord | None:
    return None if obj is None else OutputRecord(obj.name, obj.key, obj.size, obj.sha256)
