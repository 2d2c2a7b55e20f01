"""The shared backoff formula and the registries' lazy class loader."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.backoff import backoff
from backends.loading import load_backend_class


def test_backoff_doubles_from_the_base_until_the_cap() -> None:
    assert [backoff(n, base=0.5, cap=5.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@given(st.integers(min_value=-5, max_value=10**9), st.floats(0.01, 10), st.floats(0.01, 1000))
def test_backoff_never_exceeds_its_cap_nor_falls_below_its_base(retry: int, base: float, cap: float) -> None:
    delay = backoff(retry, base=base, cap=cap)
    assert min(base, cap) <= delay <= cap


@given(st.integers(min_value=1, max_value=50))
def test_jitter_stays_inside_its_factors(retry: int) -> None:
    plain = backoff(retry, base=0.2, cap=30.0)
    assert 0.8 * plain <= backoff(retry, base=0.2, cap=30.0, jitter=(0.8, 1.2)) <= 1.2 * plain


class _Refused(ValueError):
    pass


def test_loader_returns_the_named_class() -> None:
    assert load_backend_class("storage", "file", "backends.loading:load_backend_class", _Refused) is (
        load_backend_class
    )


def test_a_missing_module_of_ours_is_not_available_in_this_build() -> None:
    with pytest.raises(_Refused, match="the x storage backend is not available in this build"):
        load_backend_class("storage", "x", "backends.nothing_here:Backend", _Refused)


def test_a_missing_dependency_is_named() -> None:
    with pytest.raises(_Refused, match="needs the Python package 'no_such_package_wml'"):
        load_backend_class("workflow", "y", "tests.backends.needs_missing:Backend", _Refused)


def test_a_missing_class_is_not_available_in_this_build() -> None:
    with pytest.raises(_Refused, match="the z workflow backend is not available"):
        load_backend_class("workflow", "z", "backends.loading:Nothing", _Refused)
