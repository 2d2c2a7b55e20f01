"""Archives in the side-car: safe extraction of zip and tar inputs, streamed tars of output directories.

Extraction trusts nothing in the archive. Every member name must be relative with no ``..`` and no NUL;
only regular files and directories are written (links, devices and fifos are refused, so nothing can point
out of the destination); the bytes actually decompressed are counted against a limit, so headers that lie
cannot hide a decompression bomb. Extraction happens in a hidden scratch directory beside the destination
and is renamed into place at the end: on any refusal nothing is left behind.

The default limit is ``max(MAX_EXTRACT_RATIO * archive size, MIN_EXTRACT_ALLOWANCE)``: ordinary data
rarely compresses more than 20-50 times, bombs compress thousands of times, and the floor keeps small
archives of very repetitive text usable.

Headers are read through caps before anything is allocated for them: a GNU long name or a PAX record
larger than :data:`MAX_HEADER_SIZE` is refused from its size field (``tarfile`` would read it whole: a
200 KiB ``.tar.gz`` can carry a 200 MiB name), GNU sparse members are refused, the tar members already seen
are not kept, and a zip's central directory is walked entry by entry (its size, its member count and each
entry's name, extra field and comment capped) before ``zipfile`` reads it. Member names in messages are
cut to :data:`SHOWN_NAME` characters. Extraction is meant to run in a child process with an address-space
limit (:mod:`sidecar.extractor`), so even what these caps miss cannot take the server down.
"""

from __future__ import annotations

import asyncio
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sidecar.errors import InputStagingError

CHUNK_SIZE = 1024 * 1024
MAX_EXTRACT_RATIO = 100
MIN_EXTRACT_ALLOWANCE = 64 * 1024 * 1024
MAX_MEMBERS = 100_000
MAX_HEADER_SIZE = 8 * 1024  # bytes of one GNU long name or PAX record, or one zip entry's variable fields
MAX_NAME_BYTES = 4096  # PATH_MAX: no longer name could be created anyway
MAX_CENTRAL_DIRECTORY = 32 * 1024 * 1024
SHOWN_NAME = 200  # characters of a member name quoted in a message

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_BROKEN_ARCHIVE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,  # zipfile: encrypted member
    NotImplementedError,  # zipfile: unsupported compression
)


def default_extraction_limit(archive_size: int) -> int:
    """The most bytes an archive of ``archive_size`` bytes may extract to unless told otherwise."""
    return max(MAX_EXTRACT_RATIO * archive_size, MIN_EXTRACT_ALLOWANCE)


@dataclass(slots=True)
class _Budget:
    max_bytes: int
    max_members: int
    bytes: int = 0
    members: int = 0

    def add_member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise InputStagingError(f"archive has more than {self.max_members} members")

    def add_bytes(self, count: int, name: str) -> None:
        self.bytes += count
        if self.bytes > self.max_bytes:
            raise InputStagingError(
                f"archive member {shown(name)} takes the extracted size over the limit of "
                f"{self.max_bytes} bytes"
            )


def shown(name: str) -> str:
    """A member name as messages quote it: repr, at most SHOWN_NAME characters of it."""
    if len(name) <= SHOWN_NAME:
        return repr(name)
    return f"{name[:SHOWN_NAME]!r}... ({len(name)} characters)"


def extract_archive(
    archive: Path, destination: Path, *, max_extracted_size: int, max_members: int = MAX_MEMBERS
) -> None:
    """Extract the zip or tar (plain, gz, bz2, xz) at ``archive`` into the new directory ``destination``.

    Blocking; run it in a thread. Raises InputStagingError naming the refused member.
    """
    budget = _Budget(max_extracted_size, max_members)
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination.parent))
    try:
        with archive.open("rb") as probe:
            is_zip = probe.read(4) in _ZIP_MAGIC
        try:
            if is_zip:
                _extract_zip(archive, scratch, budget)
            else:
                _extract_tar(archive, scratch, budget)
        except _BROKEN_ARCHIVE as e:
            raise InputStagingError(f"the archive is corrupt or unsupported: {e}") from e
        except OSError as e:  # bz2 reports corrupt data as OSError; so does a full disk
            raise InputStagingError(f"cannot extract the archive: {e}") from e
        scratch.chmod(0o755)
        try:
            os.rename(scratch, destination)  # succeeds over a missing or empty directory only
        except OSError as e:
            raise InputStagingError(f"cannot place the extracted archive: {e.strerror}") from e
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


class _CappedTarInfo(tarfile.TarInfo):
    """tarfile's header reader with a size cap on the headers it would otherwise read whole."""

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _check_header_size(self, "GNU long name")
        return super()._proc_gnulong(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        _check_header_size(self, "PAX")
        return super()._proc_pax(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_sparse(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        raise _refused(self.name, "sparse file")

    def _proc_gnusparse_00(self, *args: object) -> None:
        raise _refused(self.name, "sparse file")

    _proc_gnusparse_01 = _proc_gnusparse_00
    _proc_gnusparse_10 = _proc_gnusparse_00


def _check_header_size(info: tarfile.TarInfo, kind: str) -> None:
    if info.size > MAX_HEADER_SIZE:
        raise InputStagingError(
            f"archive has a {kind} header of {info.size} bytes; headers of at most {MAX_HEADER_SIZE} are read"
        )


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*", tarinfo=_CappedTarInfo)
    except tarfile.ReadError:
        raise InputStagingError(
            "not a zip or tar archive (tar may be gzip, bzip2 or xz compressed)"
        ) from None


def _extract_tar(archive: Path, scratch: Path, budget: _Budget) -> None:
    with _open_tar(archive) as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header it read
            budget.add_member()
            parts = _safe_parts(member.name)
            if member.isdir():
                _make_directory(scratch, parts, member.name)
            elif not member.isreg():
                raise _refused(member.name, _tar_kind(member))
            else:
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - extractfile returns None only for non-files
                    raise InputStagingError(f"archive member {shown(member.name)} cannot be read")
                with source:
                    _write_member(source, scratch, parts, member.mode, member.name, budget)


def _extract_zip(archive: Path, scratch: Path, budget: _Budget) -> None:
    check_zip_directory(archive, budget.max_members)
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            budget.add_member()
            parts = _safe_parts(info.filename)
            mode = info.external_attr >> 16
            file_type = stat.S_IFMT(mode)
            if info.is_dir() or file_type == stat.S_IFDIR:
                _make_directory(scratch, parts, info.filename)
            elif file_type not in (0, stat.S_IFREG):
                kind = "symbolic link" if file_type == stat.S_IFLNK else "special file"
                raise _refused(info.filename, kind)
            else:
                with bundle.open(info) as source:
                    _write_member(source, scratch, parts, mode, info.filename, budget)


# zip's records (APPNOTE 4.3): end of central directory, the zip64 locator and record, a central entry.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")


def check_zip_directory(archive: Path, max_members: int) -> None:
    """Walk the zip's central directory entry by entry (nothing kept) and refuse it when it is larger than
    MAX_CENTRAL_DIRECTORY, has more than ``max_members`` entries, or an entry with oversized fields:
    zipfile reads the whole directory and makes an object per entry before anyone can count them."""
    with archive.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (1 << 16) - _EOCD.size)
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            raise InputStagingError("the zip archive is corrupt: no end of central directory record")
        _, _, _, _, entries, directory_size, _, _ = _EOCD.unpack_from(tail, at)
        end = tail_start + at
        record_at = end - _EOCD64_LOCATOR.size - _EOCD64.size
        if at >= _EOCD64_LOCATOR.size and tail[at - _EOCD64_LOCATOR.size : at].startswith(b"PK\x06\x07"):
            f.seek(max(0, record_at))
            record = f.read(_EOCD64.size)
            if len(record) == _EOCD64.size and record.startswith(b"PK\x06\x06"):
                entries, directory_size = _EOCD64.unpack(record)[7:9]
                end = record_at
        if entries > max_members:
            raise InputStagingError(f"archive has more than {max_members} members")
        if directory_size > MAX_CENTRAL_DIRECTORY:
            raise InputStagingError(
                f"the zip archive's central directory is {directory_size} bytes; at most "
                f"{MAX_CENTRAL_DIRECTORY} are read"
            )
        if directory_size > end:
            raise InputStagingError("the zip archive is corrupt: bad central directory offset")
        f.seek(end - directory_size)
        _walk_central_directory(f, directory_size, max_members)


def _walk_central_directory(f: IO[bytes], directory_size: int, max_members: int) -> None:
    count = walked = 0
    while walked < directory_size:
        head = f.read(_CENTRAL.size)
        if len(head) < _CENTRAL.size or not head.startswith(b"PK\x01\x02"):
            raise InputStagingError("the zip archive is corrupt: bad central directory entry")
        name_length, extra_length, comment_length = _CENTRAL.unpack(head)[12:15]
        count += 1
        if count > max_members:
            raise InputStagingError(f"archive has more than {max_members} members")
        variable = name_length + extra_length + comment_length
        if name_length > MAX_NAME_BYTES or variable > MAX_HEADER_SIZE:
            raise InputStagingError(
                f"the zip archive has a central directory entry of {variable} bytes of name, extra field "
                f"and comment; at most {MAX_HEADER_SIZE} are read"
            )
        f.seek(variable, os.SEEK_CUR)
        walked += _CENTRAL.size + variable


def _safe_parts(name: str) -> list[str]:
    if len(name.encode("utf-8", errors="surrogateescape")) > MAX_NAME_BYTES:
        raise InputStagingError(f"archive member {shown(name)} has a name longer than {MAX_NAME_BYTES} bytes")
    if "\x00" in name:
        raise InputStagingError(f"archive member {shown(name)} has a NUL character in its name")
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise InputStagingError(f"archive member {shown(name)} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise InputStagingError(f"archive member {shown(name)} has a '..' component")
    return [part for part in name.split("/") if part not in ("", ".")]


def _refused(name: str, kind: str) -> InputStagingError:
    return InputStagingError(f"archive member {shown(name)} is a {kind}; links and special files are refused")


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "special file"


def _make_directory(scratch: Path, parts: list[str], name: str) -> None:
    try:
        scratch.joinpath(*parts).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputStagingError(f"cannot extract archive member {shown(name)}: {e.strerror}") from e


def _write_member(
    source: IO[bytes], scratch: Path, parts: list[str], mode: int, name: str, budget: _Budget
) -> None:
    if not parts:
        raise InputStagingError(f"archive member {shown(name)} has no file name")
    target = scratch.joinpath(*parts)
    permissions = 0o755 if mode & 0o111 else 0o644  # keep "executable", drop setuid and friends
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Nothing in scratch can be a link (none are ever created); O_NOFOLLOW is belt and braces.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, permissions)
    except OSError as e:
        raise InputStagingError(f"cannot extract archive member {shown(name)}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as sink:
        while block := source.read(CHUNK_SIZE):
            budget.add_bytes(len(block), name)
            sink.write(block)


async def tar_directory_stream(directory: Path) -> AsyncGenerator[bytes, None]:
    """Stream an uncompressed tar of ``directory`` without holding it in memory or on disk.

    A worker thread writes the tar into a pipe that the event loop reads with flow control, so memory is
    bounded by a few chunks. Only regular files and directories are included; symbolic links and special
    files are left out (following them could read outside the directory).
    """
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    reader = asyncio.StreamReader(limit=CHUNK_SIZE)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        os.close(write_fd)
        raise
    producer = asyncio.ensure_future(asyncio.to_thread(_write_tar, directory, write_fd))
    try:
        while chunk := await reader.read(CHUNK_SIZE):
            yield chunk
        await producer  # a failure mid-way ends the stream early; surface it instead of a short tar
    finally:
        transport.close()  # a producer still writing gets EPIPE and stops
        await asyncio.wait([producer])
        if not producer.cancelled():
            producer.exception()  # retrieved: it is either raised above or superseded by ours


def _write_tar(directory: Path, write_fd: int) -> None:
    # dereference=True only turns off hard-link detection (every file is stored with its bytes);
    # links are never followed because entries are opened with O_NOFOLLOW after an lstat.
    with (
        os.fdopen(write_fd, "wb") as sink,
        tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, dereference=True) as tar,
    ):
        for path, arcname, is_dir in _plain_entries(directory):
            if is_dir:
                info = tarfile.TarInfo(arcname)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(path.stat().st_mtime)
                tar.addfile(info)
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as source:
                info = tar.gettarinfo(arcname=arcname, fileobj=source)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, source)


def _plain_entries(directory: Path) -> Iterator[tuple[Path, str, bool]]:
    """(path, name in the tar, is a directory) for every directory and regular file, sorted, no links."""

    def fail(error: OSError) -> None:
        raise error

    for current, dirnames, filenames in os.walk(directory, onerror=fail):
        base = Path(current)
        prefix = base.relative_to(directory).as_posix()
        kept = []
        for name in sorted(dirnames):
            if stat.S_ISDIR(_lstat_mode(base / name)):
                kept.append(name)
                yield base / name, _join(prefix, name), True
        dirnames[:] = kept  # os.walk descends only into these: never through a link
        for name in sorted(filenames):
            if stat.S_ISREG(_lstat_mode(base / name)):
                yield base / name, _join(prefix, name), False


def _lstat_mode(path: Path) -> int:
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return 0


def _join(prefix: str, name: str) -> str:
    return name if prefix == "." else f"{prefix}/{name}"
