"""The rows of the Pod/Job -> phase table (backends/workflow/kubernetes/status.py) that the end-to-end
tests in test_kubernetes_jobs.py do not reach, checked on the pure function."""

from __future__ import annotations

from typing import Any

import pytest

from backends.workflow.base import RunPhase
from backends.workflow.kubernetes.status import PodVerdict, classify_gone, classify_pod
from tests.support.kube_cluster import running, status, terminated, waiting

T0 = terminated(0)


def pod(new: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "n"}, "status": new}


@pytest.mark.parametrize(
    ("pod_status", "expected"),
    [
        (status("Pending", waiting(), waiting(), waiting()), (RunPhase.INITIALIZING, None)),
        (
            status("Pending", waiting("CreateContainerConfigError"), waiting(), waiting()),
            (RunPhase.INITIALIZING, None),
        ),
        (status("Pending", T0, running(), waiting()), (RunPhase.RUNNING, None)),
        (status("Running", T0, T0, running()), (RunPhase.RUNNING, None)),
        (status("Succeeded", T0, T0, waiting()), (RunPhase.ERROR, "BACKEND_LOST")),
        (status("Failed", T0, T0, terminated(137, "OOMKilled")), (RunPhase.ERROR, "OUTPUT_UPLOAD_FAILED")),
        (status("Failed", terminated(5), waiting(), waiting()), (RunPhase.ERROR, "INPUT_STAGING_FAILED")),
        (
            status("Pending", waiting("ErrImageNeverPull"), waiting(), waiting()),
            (RunPhase.ERROR, "IMAGE_PULL_FAILED"),
        ),
        (
            status(
                "Running",
                T0,
                running(),
                waiting(),
                conditions=[{"type": "DisruptionTarget", "status": "True"}],
            ),
            (RunPhase.ERROR, "EVICTED"),
        ),
        (status("Failed", T0, running(), waiting(), reason="NodeLost"), (RunPhase.ERROR, "EVICTED")),
    ],
)
def test_pod_rows(pod_status: dict[str, Any], expected: tuple[RunPhase, str | None]) -> None:
    verdict = classify_pod(pod(pod_status))
    assert (verdict.phase, verdict.reason) == expected


def test_the_side_cars_json_log_line_gives_the_message() -> None:
    said = 'downloading\n{"event": "sidecar_failed", "exit_code": 5, "error": "storage unavailable: refused"}'
    verdict = classify_pod(pod(status("Failed", terminated(5, message=said), waiting(), waiting())))
    assert verdict.message == "staging the inputs failed: storage unavailable: refused"
    bare = classify_pod(pod(status("Failed", terminated(3), waiting(), waiting())))
    assert bare.message == "staging the inputs failed: an input is missing or corrupt"


def _job(*conditions: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "status": {"conditions": list(conditions)}}


@pytest.mark.parametrize(
    ("job", "last", "expected"),
    [
        (None, None, (RunPhase.ERROR, "BACKEND_LOST")),
        (_job(), None, (RunPhase.INITIALIZING, None)),
        (_job({"type": "Complete", "status": "True"}), None, (RunPhase.ERROR, "BACKEND_LOST")),
        (
            _job({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}),
            None,
            (RunPhase.ERROR, "BACKEND_LOST"),
        ),
        (
            _job({"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}),
            None,
            (RunPhase.FAILED, "RUN_TIMEOUT"),
        ),
        (_job(), pod(status("Pending", T0, running(), waiting())), (RunPhase.ERROR, "EVICTED")),
        (_job(), pod(status("Failed", T0, terminated(2), waiting())), (RunPhase.FAILED, "NONZERO_EXIT")),
    ],
)
def test_gone_rows(
    job: dict[str, Any] | None, last: dict[str, Any] | None, expected: tuple[RunPhase, str | None]
) -> None:
    verdict: PodVerdict = classify_gone(job, last)
    assert (verdict.phase, verdict.reason) == expected
