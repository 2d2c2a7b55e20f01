"""The transition table: terminal states never change, and every live state can fail or be stopped."""

from __future__ import annotations

import itertools

import pytest

from core.states import TERMINAL_STATES, TRANSITIONS, IllegalTransitionError, JobState, check_transition


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_a_terminal_state_never_changes(terminal: JobState) -> None:
    for target in JobState:
        with pytest.raises(IllegalTransitionError):
            check_transition(terminal, target)


@pytest.mark.parametrize("live", [s for s in JobState if not s.terminal])
def test_every_live_state_can_reach_system_error_and_a_stop(live: JobState) -> None:
    assert JobState.SYSTEM_ERROR in TRANSITIONS[live]
    assert JobState.CANCELED in TRANSITIONS[live]


def test_the_happy_path_is_allowed_in_order() -> None:
    path = [JobState.QUEUED, JobState.INITIALIZING, JobState.RUNNING, JobState.COMPLETE]
    for current, target in itertools.pairwise(path):
        check_transition(current, target)


def test_a_queued_job_cannot_skip_to_running_or_complete() -> None:
    for target in (JobState.RUNNING, JobState.COMPLETE, JobState.EXECUTOR_ERROR, JobState.CANCELING):
        with pytest.raises(IllegalTransitionError):
            check_transition(JobState.QUEUED, target)


def test_no_state_transitions_to_itself() -> None:
    for state in JobState:
        assert state not in TRANSITIONS[state]
