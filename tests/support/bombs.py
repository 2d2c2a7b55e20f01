"""Hostile archives, built in a streaming way so the tests themselves stay small in memory."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

_BLOCK = 512
_CHUNK = 1024 * 1024


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def long_name_tar_gz(name_size: int, kind: bytes = tarfile.GNUTYPE_LONGNAME) -> bytes:
    """A gzipped tar whose first header is a GNU long name (or PAX record, ``kind=tarfile.XHDTYPE``) of
    ``name_size`` bytes of ``a``, then an empty member: 200 MiB of name compress to about 200 KiB."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    out = io.BytesIO()
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, name_size + 1
    out.write(gz.compress(header.tobuf(format=tarfile.GNU_FORMAT)))
    left = name_size
    chunk = b"a" * _CHUNK
    while left > 0:
        out.write(gz.compress(chunk[: min(left, _CHUNK)]))
        left -= _CHUNK
    out.write(gz.compress(b"\0" + _padding(name_size + 1)))
    out.write(gz.compress(tarfile.TarInfo("x").tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 2 * _BLOCK))
    out.write(gz.flush())
    return out.getvalue()


def many_members_tar_gz(count: int) -> bytes:
    """A gzipped tar of ``count`` empty files in 100 directories."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        for i in range(count):
            tar.addfile(tarfile.TarInfo(f"d{i % 100}/f{i}"))
    return out.getvalue()


# zip records (APPNOTE 4.3)
_LOCAL = struct.Struct("<4s5H3L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")


def zip_with_directory(entries: int, *, name_size: int = 6, claimed: int | None = None) -> bytes:
    """A zip whose central directory has ``entries`` entries (names of ``name_size`` bytes), all pointing
    at one empty local file; the end record claims ``claimed`` entries (default: the truth, capped at
    65535 as the field is 16 bits). No data to speak of: the file is its central directory."""
    local = _LOCAL.pack(b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    rows = []
    for i in range(entries):
        name = str(i).zfill(name_size).encode()[:name_size]
        rows.append(
            _CENTRAL.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0)
        )
        rows.append(name)
    directory = b"".join(rows)
    count = min(entries if claimed is None else claimed, 0xFFFF)
    end = _END.pack(b"PK\x05\x06", 0, 0, count, count, len(directory), len(local), 0)
    return local + directory + end
