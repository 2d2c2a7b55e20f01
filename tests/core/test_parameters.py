"""A job's parameters against its asset's declarations: names, types, bounds, choices, defaults.

Unit tests of :func:`core.parameters.resolve_parameters` (the API tests prove it end to end); the bounds
are checked property-based: every value inside is accepted as it is, every value outside is refused with
a typed error naming the parameter.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.assets import Asset
from core.errors import ValidationError
from core.parameters import MAX_STRING, as_env, resolve_parameters

LOW, HIGH = -5, 86400


def _asset(*parameters: dict[str, Any]) -> Asset:
    return Asset.model_validate({"id": "a", "name": "A", "image": "img", "parameters": list(parameters)})


SLEEP = _asset({"name": "SLEEPTIME", "type": "integer", "min": LOW, "max": HIGH, "default": 2})
RATIO = _asset({"name": "RATIO", "type": "number", "min": 0, "max": 1, "required": True})
MODE = _asset({"name": "MODE", "type": "string", "choices": ["fast", "exact"], "default": "fast"})
FLAG = _asset({"name": "VERBOSE", "type": "boolean", "default": False})


def _refused(asset: Asset, values: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        resolve_parameters(asset, values)
    return raised.value


@given(st.integers(LOW, HIGH))
def test_an_integer_within_its_bounds_is_accepted_as_it_is(value: int) -> None:
    assert resolve_parameters(SLEEP, {"SLEEPTIME": value}) == {"SLEEPTIME": value}


@given(st.one_of(st.integers(max_value=LOW - 1), st.integers(min_value=HIGH + 1)))
def test_an_integer_outside_its_bounds_is_refused_naming_the_parameter(value: int) -> None:
    error = _refused(SLEEP, {"SLEEPTIME": value})
    assert error.field == "parameters.SLEEPTIME"
    assert "SLEEPTIME" in error.message


@given(st.floats(0, 1))
def test_a_number_within_its_bounds_is_accepted(value: float) -> None:
    assert resolve_parameters(RATIO, {"RATIO": value}) == {"RATIO": value}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1.5, -0.1, True, "0.5", [0.5]])
def test_a_number_that_is_not_finite_in_bounds_and_numeric_is_refused(value: Any) -> None:
    assert _refused(RATIO, {"RATIO": value}).field == "parameters.RATIO"


def test_an_integer_parameter_refuses_a_fraction_and_takes_a_whole_float_as_an_integer() -> None:
    assert _refused(SLEEP, {"SLEEPTIME": 2.5}).field == "parameters.SLEEPTIME"
    resolved = resolve_parameters(SLEEP, {"SLEEPTIME": 3.0})
    assert resolved == {"SLEEPTIME": 3} and isinstance(resolved["SLEEPTIME"], int)


def test_a_missing_parameter_takes_its_default_and_a_missing_required_one_is_refused() -> None:
    assert resolve_parameters(SLEEP, None) == {"SLEEPTIME": 2}
    assert resolve_parameters(MODE, {}) == {"MODE": "fast"}
    assert _refused(RATIO, {}).message == "parameter RATIO is required"


@given(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True), st.integers(), min_size=1))
def test_an_undeclared_parameter_is_refused_by_name(extra: dict[str, int]) -> None:
    extra.pop("SLEEPTIME", None)
    if not extra:
        return
    error = _refused(SLEEP, extra)
    assert error.field == f"parameters.{sorted(extra)[0]}"
    assert all(name in error.message for name in extra)


def test_a_string_must_be_one_of_its_choices_short_and_free_of_nul() -> None:
    assert resolve_parameters(MODE, {"MODE": "exact"}) == {"MODE": "exact"}
    for value in ("slow", "fast\x00", "f" * (MAX_STRING + 1), 1):
        assert _refused(MODE, {"MODE": value}).field == "parameters.MODE"


def test_a_boolean_is_only_a_boolean_and_a_number_never_one() -> None:
    assert resolve_parameters(FLAG, {"VERBOSE": True}) == {"VERBOSE": True}
    for value in (1, 0, "true"):
        assert _refused(FLAG, {"VERBOSE": value}).field == "parameters.VERBOSE"
    assert _refused(SLEEP, {"SLEEPTIME": True}).field == "parameters.SLEEPTIME"


def test_parameters_reach_the_worker_as_text() -> None:
    assert as_env({"VERBOSE": False, "SLEEPTIME": 3, "RATIO": 0.5, "MODE": "fast"}) == {
        "VERBOSE": "false",
        "SLEEPTIME": "3",
        "RATIO": "0.5",
        "MODE": "fast",
    }


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_an_integer_past_any_float_is_refused_not_a_crash(value: int) -> None:
    assert _refused(SLEEP, {"SLEEPTIME": value}).field == "parameters.SLEEPTIME"
    assert _refused(RATIO, {"RATIO": value}).field == "parameters.RATIO"


def test_a_string_with_a_lone_surrogate_is_refused_not_a_crash() -> None:
    free = _asset({"name": "NOTE", "type": "string"})
    assert _refused(free, {"NOTE": "a\ud800b"}).field == "parameters.NOTE"
