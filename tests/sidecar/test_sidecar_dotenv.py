"""read_dotenv: the dotenv dialect accepted for ``env`` inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.staging import read_dotenv


def parse(tmp_path: Path, text: str | bytes) -> dict[str, str]:
    path = tmp_path / "job.env"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return read_dotenv(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=two words\n", {"A": "1", "B": "two words"}),
        ("# comment\n\n   \nA=1\n  # indented comment\n", {"A": "1"}),
        ("export A=1\nexport\tB=2\n", {"A": "1", "B": "2"}),
        ("A = spaced \n", {"A": "spaced"}),
        ("A=\n", {"A": ""}),
        ("A=value # trailing comment\n", {"A": "value"}),
        ("A=value#not-a-comment\n", {"A": "value#not-a-comment"}),
        ("A='single # $HOME \\n'\n", {"A": "single # $HOME \\n"}),
        ('A="double \\"quoted\\" \\n line\\t\\\\"\n', {"A": 'double "quoted" \n line\t\\'}),
        ('A="x" # comment after quotes\n', {"A": "x"}),
        ("A=\"\"\nB=''\n", {"A": "", "B": ""}),
        ("A=a=b=c\n", {"A": "a=b=c"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("_private9=x\r\nWINDOWS=crlf\r\n", {"_private9": "x", "WINDOWS": "crlf"}),
        ("\ufeffA=bom\n", {"A": "bom"}),
        ("A=1", {"A": "1"}),
        ("export=1\n", {"export": "1"}),
        ("A=ünïcödé ✓\n", {"A": "ünïcödé ✓"}),
        ("", {}),
    ],
)
def test_valid_dotenv(tmp_path: Path, text: str, expected: dict[str, str]) -> None:
    assert parse(tmp_path, text) == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("A=1\ns3cr3t\n", 2),
        ("1s3cr3t=x\n", 1),
        ("s3-cr3t=x\n", 1),
        ("=s3cr3t\n", 1),
        ("A=1\n\nB='s3cr3t\n", 3),
        ('A="s3cr3t\nline"\n', 1),
        ("A='x' s3cr3t\n", 1),
        ("A=s3cr3t\x00y\n", 1),
        ("export s3cr3t\n", 1),
    ],
)
def test_invalid_lines_are_reported_by_number_not_content(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ValueError, match=rf"^line {line}: ") as caught:
        parse(tmp_path, text)

    assert "s3cr3t" not in str(caught.value)


def test_invalid_utf8_is_reported_by_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^line 2: not valid UTF-8"):
        parse(tmp_path, b"A=1\nB=\xff\xfe\n")
