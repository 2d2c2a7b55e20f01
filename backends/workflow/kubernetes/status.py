"""How the status of a job's Pod (and, when the Pod is gone, its Job) maps onto a :class:`RunPhase`.

The Pod runs init containers ``stage-in`` and ``worker``, then the container ``stage-out``
(see :mod:`backends.workflow.kubernetes.manifests`). The first row that matches wins:

=====================================================  ====================================================
Pod or Job                                             phase / reason
=====================================================  ====================================================
Pod ``Failed``, reason ``DeadlineExceeded``            FAILED / RUN_TIMEOUT (activeDeadlineSeconds)
Pod ``Failed`` with another pod-level reason           ERROR / EVICTED (Evicted, NodeLost, Shutdown, ...)
(or a ``DisruptionTarget`` condition)
a container waiting in ErrImagePull, ImagePullBackOff,  ERROR / IMAGE_PULL_FAILED
InvalidImageName, ErrImageNeverPull, ...
``stage-in`` terminated, exit code != 0                ERROR / INPUT_STAGING_FAILED (side-car exit 3: input
                                                       missing or corrupt; 5: storage unavailable)
``worker`` terminated ``OOMKilled``                    FAILED / OOM_KILLED, with the exit code
``worker`` terminated, exit code != 0                  FAILED / NONZERO_EXIT, with the exit code
``stage-out`` terminated, exit code 0                  SUCCEEDED, outputs from the output manifest (a
                                                       required output it lists missing: OUTPUT_MISSING)
``stage-out`` terminated, exit code 4                  FAILED / OUTPUT_MISSING
``stage-out`` terminated otherwise (or OOMKilled)      ERROR / OUTPUT_UPLOAD_FAILED
Pod ``Failed`` or ``Succeeded`` otherwise              ERROR / BACKEND_LOST
``worker`` running, or done and ``stage-out`` busy     RUNNING
anything else (``Pending``: scheduling, pulling,       INITIALIZING (the supervisor's start deadline turns
staging in; CreateContainerConfigError is retried)     a Pod pending too long into START_TIMEOUT)
-----------------------------------------------------  ----------------------------------------------------
Pod gone, Job gone                                     ERROR / BACKEND_LOST (deleted behind our back)
Pod gone, Job failed with ``DeadlineExceeded``         FAILED / RUN_TIMEOUT
Pod gone before it ended, Job still there              ERROR / EVICTED (evicted, preempted, node lost)
Pod not created yet, Job active                        INITIALIZING
=====================================================  ====================================================

A cancel is not in the table: the backend deletes the Job and reports CANCELED itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.workflow.base import RunPhase
from backends.workflow.kubernetes.manifests import STAGE_IN, STAGE_OUT, WORKER

IMAGE_PULL_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
        "ImageInspectError",
        "SignatureValidationFailed",
    }
)
SIDECAR_OUTPUT_MISSING = 4  # the side-car's exit code for "a required output was not produced"
_STAGE_IN_EXITS = {3: "an input is missing or corrupt", 5: "storage is unavailable"}
TERMINAL_PHASES = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.ERROR, RunPhase.CANCELED})

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PodVerdict:
    """What the table says about one observation of a job's Pod."""

    phase: RunPhase
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    worker_started: bool = False  # the worker has (or had) a log to read
    read_outputs: bool = False  # stage-out ended: its output manifest is to be read

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


def container_statuses(pod: Obj) -> dict[str, Obj]:
    status = pod.get("status") or {}
    every = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return {c["name"]: c for c in every if "name" in c}


def terminated(container: Obj | None) -> Obj | None:
    if container is None:
        return None
    state = container.get("state") or {}
    return state.get("terminated") or None


def started(container: Obj | None) -> bool:
    state = (container or {}).get("state") or {}
    return bool(state.get("running") or state.get("terminated"))


def classify_pod(pod: Obj) -> PodVerdict:
    """The table's rows for a Pod that exists."""
    status = pod.get("status") or {}
    containers = container_statuses(pod)
    worker = containers.get(WORKER)
    worker_done = terminated(worker)
    ran = started(worker)
    code = None if worker_done is None else int(worker_done.get("exitCode", 0))
    pod_phase, pod_reason = status.get("phase"), status.get("reason")
    message = status.get("message")
    if pod_phase == "Failed" and pod_reason == "DeadlineExceeded":
        text = f"the job ran past its deadline: {message or 'activeDeadlineSeconds'}"
        return PodVerdict(RunPhase.FAILED, "RUN_TIMEOUT", text, code, ran)
    if (pod_phase == "Failed" and pod_reason) or _disrupted(pod):
        text = f"the pod was stopped by the cluster ({pod_reason or 'disruption'}): {message or ''}".strip()
        return PodVerdict(RunPhase.ERROR, "EVICTED", text.rstrip(":"), code, ran)
    pulling = _image_pull_failure(containers)
    if pulling is not None:
        return PodVerdict(RunPhase.ERROR, "IMAGE_PULL_FAILED", pulling)
    verdict = _containers_verdict(containers, code, ran)
    if verdict is not None:
        return verdict
    if pod_phase in ("Failed", "Succeeded"):
        text = f"the pod ended ({pod_phase}) without a result: {message or 'no container status'}"
        return PodVerdict(RunPhase.ERROR, "BACKEND_LOST", text, code, ran)
    if ran:
        return PodVerdict(RunPhase.RUNNING, worker_started=True)
    return PodVerdict(RunPhase.INITIALIZING)


def _containers_verdict(containers: Mapping[str, Obj], code: int | None, ran: bool) -> PodVerdict | None:
    staged = terminated(containers.get(STAGE_IN))
    if staged is not None and int(staged.get("exitCode", 0)) != 0:
        side_code = int(staged.get("exitCode", 0))
        detail = _last_words(staged) or _STAGE_IN_EXITS.get(side_code, f"exit code {side_code}")
        return PodVerdict(RunPhase.ERROR, "INPUT_STAGING_FAILED", f"staging the inputs failed: {detail}")
    worker = terminated(containers.get(WORKER))
    if worker is not None and worker.get("reason") == "OOMKilled":
        return PodVerdict(RunPhase.FAILED, "OOM_KILLED", "the worker ran out of memory", code, ran)
    if code is not None and code != 0:
        return PodVerdict(RunPhase.FAILED, "NONZERO_EXIT", f"the worker exited with {code}", code, ran)
    out = terminated(containers.get(STAGE_OUT))
    if out is None:
        return None
    out_code = int(out.get("exitCode", 0))
    if out_code == 0 and out.get("reason") != "OOMKilled":
        return PodVerdict(RunPhase.SUCCEEDED, None, None, code, ran, read_outputs=True)
    if out_code == SIDECAR_OUTPUT_MISSING:
        detail = "a required output was not produced"
        return PodVerdict(RunPhase.FAILED, "OUTPUT_MISSING", detail, code, ran, read_outputs=True)
    detail = "out of memory" if out.get("reason") == "OOMKilled" else f"exit code {out_code}"
    return PodVerdict(
        RunPhase.ERROR, "OUTPUT_UPLOAD_FAILED", f"uploading the results failed: {detail}", code, ran
    )


def _image_pull_failure(containers: Mapping[str, Obj]) -> str | None:
    for name, container in containers.items():
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            image = container.get("image", "?")
            detail = waiting.get("message") or waiting["reason"]
            return f"the image {image} of container {name} cannot be pulled: {detail}"
    return None


def _disrupted(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions)


def _last_words(state: Obj) -> str | None:
    """The termination message (by FallbackToLogsOnError, the container's last log lines), shortened.

    The side-car logs JSON lines: their ``error`` field is what it says went wrong.
    """
    lines = [line for line in str(state.get("message") or "").splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].strip()
    with contextlib.suppress(ValueError):
        entry = json.loads(last)
        if isinstance(entry, dict) and entry.get("error"):
            last = str(entry["error"])
    return last[-500:]


def classify_gone(job: Obj | None, last_pod: Obj | None) -> PodVerdict:
    """The table's rows for a job whose Pod is gone (or not created yet)."""
    if job is None:
        return PodVerdict(RunPhase.ERROR, "BACKEND_LOST", "the Kubernetes Job is gone")
    conditions = (job.get("status") or {}).get("conditions") or []
    failed = next((c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None)
    if failed is not None and failed.get("reason") == "DeadlineExceeded":
        return PodVerdict(
            RunPhase.FAILED, "RUN_TIMEOUT", "the job ran past its deadline (activeDeadlineSeconds)"
        )
    if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
        return PodVerdict(RunPhase.ERROR, "BACKEND_LOST", "the pod of the finished Job is gone")
    if last_pod is not None:
        verdict = classify_pod(last_pod)
        if verdict.terminal:
            return verdict
        return PodVerdict(
            RunPhase.ERROR, "EVICTED", "the pod was deleted before it finished (evicted or lost)"
        )
    if failed is not None:
        return PodVerdict(RunPhase.ERROR, "BACKEND_LOST", f"the Job failed: {failed.get('message') or ''}")
    return PodVerdict(RunPhase.INITIALIZING)
