"""The job state machine: states (GA4GH TES names), reasons, and the one transition table.

Every state change in the service goes through :func:`check_transition`; a terminal state never changes.
"""

from __future__ import annotations

import enum


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


class Reason(enum.StrEnum):
    """Machine-readable cause of a state, stable for clients to switch on."""

    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    START_TIMEOUT = "START_TIMEOUT"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    CANCEL_TIMEOUT = "CANCEL_TIMEOUT"
    NONZERO_EXIT = "NONZERO_EXIT"
    KILLED_BY_SIGNAL = "KILLED_BY_SIGNAL"
    IMAGE_PULL_FAILED = "IMAGE_PULL_FAILED"
    INPUT_STAGING_FAILED = "INPUT_STAGING_FAILED"
    OUTPUT_MISSING = "OUTPUT_MISSING"
    OUTPUT_UPLOAD_FAILED = "OUTPUT_UPLOAD_FAILED"
    OOM_KILLED = "OOM_KILLED"
    SUBMIT_FAILED = "SUBMIT_FAILED"
    BACKEND_LOST = "BACKEND_LOST"
    EVICTED = "EVICTED"  # the cluster stopped the job's pod (eviction, preemption, node lost)
    CANCELED_BY_USER = "CANCELED_BY_USER"
    DEPROVISIONED = "DEPROVISIONED"


TERMINAL_STATES = frozenset(
    {JobState.COMPLETE, JobState.EXECUTOR_ERROR, JobState.SYSTEM_ERROR, JobState.CANCELED}
)

# The one table. Failure states are reachable from every live state: a backend may lose a job
# at any point, and a deadline may pass in any non-terminal state.
_FAILURES = {JobState.EXECUTOR_ERROR, JobState.SYSTEM_ERROR}
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.INITIALIZING, JobState.CANCELED, JobState.SYSTEM_ERROR}),
    JobState.INITIALIZING: frozenset(
        {JobState.RUNNING, JobState.COMPLETE, JobState.CANCELING, JobState.CANCELED} | _FAILURES
    ),
    JobState.RUNNING: frozenset({JobState.COMPLETE, JobState.CANCELING, JobState.CANCELED} | _FAILURES),
    # A job asked to stop may still finish on its own before the stop lands; its real outcome wins.
    JobState.CANCELING: frozenset({JobState.CANCELED, JobState.COMPLETE} | _FAILURES),
    JobState.COMPLETE: frozenset(),
    JobState.EXECUTOR_ERROR: frozenset(),
    JobState.SYSTEM_ERROR: frozenset(),
    JobState.CANCELED: frozenset(),
}


class IllegalTransitionError(Exception):
    def __init__(self, current: JobState, target: JobState) -> None:
        super().__init__(f"job cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: JobState, target: JobState) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobState, target: JobState) -> None:
    if not can_transition(current, target):
        raise IllegalTransitionError(current, target)
