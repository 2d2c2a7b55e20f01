"""Archive headers are read through caps, and extraction runs in a child process with a memory limit.

The caps are asserted where they act (extract_archive), the child process through extract_in_child:
a refusal arrives as InputStagingError with the child's message, memory beyond the limit as a refusal
too, and member names in every message are cut to 200 characters.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from sidecar.archives import MAX_HEADER_SIZE, SHOWN_NAME, extract_archive
from sidecar.errors import InputStagingError
from sidecar.extractor import extract_in_child
from tests.support.bombs import long_name_tar_gz, zip_with_directory

MiB = 1024 * 1024


def peak_of_extracting(tmp_path: Path, data: bytes, name: str) -> tuple[int, str]:
    """(peak RSS in KiB, its refusal) of a fresh interpreter running extract_archive on ``data`` (VmHWM:
    the test process's own peak would hide the growth of one extraction; ru_maxrss survives exec)."""
    archive = tmp_path / name
    archive.write_bytes(data)
    code = (
        "import sys; from pathlib import Path; from sidecar.archives import extract_archive\n"
        "try: extract_archive(Path(sys.argv[1]), Path(sys.argv[2]), max_extracted_size=2**27)\n"
        "except Exception as e: print(e)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive), str(tmp_path / "out")],
        capture_output=True,
        timeout=120,
        check=True,
    )
    refusal, peak = done.stdout.decode().strip().rsplit("\n", 1)
    return int(peak), refusal


def extract(tmp_path: Path, data: bytes, name: str = "archive") -> Path:
    archive = tmp_path / name
    archive.write_bytes(data)
    extract_archive(archive, tmp_path / "out", max_extracted_size=100 * MiB)
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("kind", "what"), [(tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.XHDTYPE, "PAX")]
)
def test_an_oversized_tar_header_is_refused_before_it_is_read(tmp_path: Path, kind: bytes, what: str) -> None:
    bomb = long_name_tar_gz(64 * MiB, kind)  # 64 MiB of name in about 64 KiB

    peak_kib, refusal = peak_of_extracting(tmp_path, bomb, "bomb.tar.gz")

    assert f"{what} header of {64 * MiB + 1} bytes" in refusal
    assert peak_kib < 48 * 1024  # tarfile alone reads the 64 MiB name, then decodes it (over 128 MiB)
    assert len(refusal) < 200
    assert not (tmp_path / "out").exists()


def test_a_long_name_within_the_cap_still_extracts(tmp_path: Path) -> None:
    name = "/".join(["d" * 50] * 20) + "/file"  # over tar's 100 bytes: a GNU long name or PAX record
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))

    assert (extract(tmp_path, buffer.getvalue()) / name).read_bytes() == b"ok"


def test_sparse_tar_members_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("holes")
        info.type = tarfile.GNUTYPE_SPARSE
        tar.addfile(info)

    with pytest.raises(InputStagingError, match="'holes' is a sparse file"):
        extract(tmp_path, buffer.getvalue())


def test_a_zip_directory_with_more_entries_than_its_end_record_claims_is_counted_and_refused(
    tmp_path: Path,
) -> None:
    bomb = zip_with_directory(300_000, claimed=1)

    peak_kib, refusal = peak_of_extracting(tmp_path, bomb, "bomb.zip")

    assert refusal == "archive has more than 100000 members"
    # zipfile alone makes 300 000 ZipInfo objects before anybody can count them (over 100 MiB).
    assert peak_kib < 48 * 1024


def test_zip_entries_with_oversized_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputStagingError, match=f"at most {MAX_HEADER_SIZE} are read"):
        extract(tmp_path, zip_with_directory(2, name_size=MAX_HEADER_SIZE + 1), "names.zip")


def test_a_normal_zip_still_extracts(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("a/b.txt", b"hello")
        bundle.writestr("c.txt", b"world")
        bundle.comment = b"a comment"

    out = extract(tmp_path, buffer.getvalue(), "ok.zip")
    assert (out / "a" / "b.txt").read_bytes() == b"hello"


def test_member_names_in_messages_are_cut(tmp_path: Path) -> None:
    name = "x" * 3000 + "/../escape"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo(name))

    with pytest.raises(InputStagingError) as refused:
        extract(tmp_path, buffer.getvalue())

    message = str(refused.value)
    assert "'..' component" in message
    assert "x" * SHOWN_NAME in message and "x" * (SHOWN_NAME + 1) not in message
    assert "(3010 characters)" in message


async def test_extraction_in_the_child_reports_refusals_and_extracts(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(long_name_tar_gz(16 * MiB))
    with pytest.raises(InputStagingError, match="GNU long name header"):
        await extract_in_child(bomb, tmp_path / "refused", max_extracted_size=MiB)
    assert not (tmp_path / "refused").exists()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("in/side.txt", b"fine")
    (tmp_path / "ok.zip").write_bytes(buffer.getvalue())
    await extract_in_child(tmp_path / "ok.zip", tmp_path / "ok", max_extracted_size=MiB)
    assert (tmp_path / "ok" / "in" / "side.txt").read_bytes() == b"fine"


async def test_extraction_needing_more_memory_than_the_child_may_have_is_refused(tmp_path: Path) -> None:
    # Within every cap but the member count (lifted here), zipfile needs far more than 64 MiB for it.
    (tmp_path / "big.zip").write_bytes(zip_with_directory(300_000, claimed=1))

    with pytest.raises(InputStagingError, match="needs more than 67108864 bytes of memory"):
        await extract_in_child(
            tmp_path / "big.zip", tmp_path / "out", max_extracted_size=MiB, max_members=10**6, memory=64 * MiB
        )
    assert not (tmp_path / "out").exists()
