"""The rules for files, without the API: names are display text (never a path), content types and
digests are checked, and byte ranges are parsed as RFC 9110 says. Property-based where the input space is
large (hostile names, ranges)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ValidationError
from core.files import (
    MAX_NAME_BYTES,
    RangeNotSatisfiableError,
    check_content_type,
    check_name,
    check_sha256,
    parse_range,
)


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "   ",
        ".",
        "..",
        "../etc/passwd",
        "/abs",
        "a/b",
        "a\\b",
        "nul\x00byte",
        "bell\x07",
        "rtl\u202etxt.exe",
        "lone\ud800surrogate",
        "x" * (MAX_NAME_BYTES + 1),
        "é" * (MAX_NAME_BYTES // 2 + 1),
    ],
)
def test_a_name_that_could_act_as_a_path_or_hide_characters_is_refused(hostile: str) -> None:
    with pytest.raises(ValidationError) as raised:
        check_name(hostile)
    assert raised.value.field == "name"


@given(st.text(min_size=1, max_size=300))
def test_any_accepted_name_is_one_plain_path_component(name: str) -> None:
    try:
        accepted = check_name(name)
    except ValidationError:
        return
    assert accepted and "/" not in accepted and "\\" not in accepted and accepted not in {".", ".."}
    assert "\x00" not in accepted and len(accepted.encode()) <= MAX_NAME_BYTES
    assert accepted == accepted.strip()


def test_a_name_is_kept_as_given_in_its_composed_form() -> None:
    assert check_name("  re\u0301sume\u0301.pdf ") == "r\u00e9sum\u00e9.pdf"


def test_content_types_and_digests_are_checked() -> None:
    assert check_content_type(None) == check_content_type("  ")
    assert check_content_type("text/plain; charset=utf-8") == "text/plain; charset=utf-8"
    for bad in ("text", "text/plain\r\nX-Evil: 1", "a/b" + "c" * 300):
        with pytest.raises(ValidationError):
            check_content_type(bad)
    assert check_sha256("AB" * 32) == "ab" * 32
    for bad in ("ab" * 31, "zz" * 32):
        with pytest.raises(ValidationError):
            check_sha256(bad)


@given(st.integers(0, 10_000), st.integers(0, 20_000), st.integers(0, 20_000))
def test_a_satisfiable_range_stays_inside_the_file(size: int, first: int, last: int) -> None:
    try:
        start, length = parse_range(f"bytes={first}-{last}", size)
    except RangeNotSatisfiableError:
        assert first >= size or last < first
        return
    assert start >= 0 and length > 0 and start + length <= size
    assert start == first and length == min(last, size - 1) - first + 1


def test_ranges_that_are_not_one_valid_range_get_the_whole_file() -> None:
    for header in (None, "", "bytes=0-1,3-4", "bytes=--1", "bytes=+5-", "bytes=1_0-", "items=0-1", "bytes=-"):
        assert parse_range(header, 100) == (0, 100)
    assert parse_range("bytes=-10", 100) == (90, 10)
    assert parse_range("bytes=-500", 100) == (0, 100)
    with pytest.raises(RangeNotSatisfiableError):
        parse_range("bytes=-0", 100)
