"""Moving file content to and from the signed URLs the API hands out: PUT for ``createUpload``, GET for
``File.downloadUrl`` (resumed with ``Range`` from a ``.part`` file), both verified by sha256.

The URLs carry their own authorisation (a signature, or a presigned storage URL), so they are fetched
without the API token: a storage service would refuse a request with two kinds of authorisation, and the
token has no business leaving for another host.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

CHUNK = 1024 * 1024
Progress = Callable[[int], None]


class TransferError(Exception):
    """A transfer failed: the URL refused it, or the bytes do not match their sha256."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ProgressReader(io.FileIO):
    """A file opened for reading that reports each chunk read (httpx reads multipart files in chunks)."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        super().__init__(path, "rb")
        self._progress = progress

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        if self._progress is not None and chunk:
            self._progress(len(chunk))
        return chunk or b""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def file_sha256(path: Path) -> str:
    return await asyncio.to_thread(sha256_of, path)


async def put_file(
    url: str, method: str, path: Path, progress: Progress | None, *, http_timeout: float
) -> None:
    """Send ``path``'s bytes to an upload URL, with its length announced (presigned URLs require it)."""
    size = (await asyncio.to_thread(path.stat)).st_size

    async def body() -> AsyncIterator[bytes]:
        with path.open("rb") as fh:
            while chunk := await asyncio.to_thread(fh.read, CHUNK):
                if progress is not None:
                    progress(len(chunk))
                yield chunk

    async with httpx.AsyncClient(timeout=http_timeout) as http:
        try:
            resp = await http.request(method, url, content=body(), headers={"Content-Length": str(size)})
        except httpx.TransportError as e:
            raise TransferError(f"upload failed: {e or type(e).__name__}", "UNREACHABLE") from None
    if resp.status_code >= 300:
        raise TransferError(
            f"upload refused: HTTP {resp.status_code}: {_reason(resp)}", f"HTTP_{resp.status_code}"
        )


async def download_file(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    on_start: Callable[[int, int], None] | None = None,
    progress: Progress | None = None,
    http_timeout: float = 30.0,
) -> bool:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming a ``.part`` left by an earlier try with
    a ``Range`` request (the API's download URLs and S3 honour it); verify the whole file's sha256 before
    the rename. ``on_start(offset, total)`` tells where the transfer starts. Returns whether it resumed.

    A mismatch deletes the ``.part`` (the next try starts over) and raises ``CHECKSUM_MISMATCH``.
    """
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    digest = hashlib.sha256()
    async with httpx.AsyncClient(timeout=http_timeout) as http:
        try:
            async with http.stream("GET", url, headers=headers) as resp:
                if resp.status_code == 416:  # the .part is not a prefix of this file: start over
                    part.unlink()
                    return await download_file(
                        url,
                        dest,
                        sha256=sha256,
                        on_start=on_start,
                        progress=progress,
                        http_timeout=http_timeout,
                    )
                if resp.status_code not in (200, 206):
                    await resp.aread()
                    raise TransferError(
                        f"download refused: HTTP {resp.status_code}: {_reason(resp)}",
                        f"HTTP_{resp.status_code}",
                    )
                resumed = resp.status_code == 206
                if resumed:
                    await asyncio.to_thread(_hash_into, digest, part)
                else:
                    offset = 0
                total = offset + int(resp.headers.get("content-length", 0))
                if on_start is not None:
                    on_start(offset, total)
                with part.open("ab" if resumed else "wb") as fh:
                    async for chunk in resp.aiter_bytes(CHUNK):
                        digest.update(chunk)
                        await asyncio.to_thread(fh.write, chunk)
                        if progress is not None:
                            progress(len(chunk))
        except httpx.TransportError as e:
            raise TransferError(f"download failed: {e or type(e).__name__}", "UNREACHABLE") from None
    if sha256 is not None and digest.hexdigest() != sha256:
        part.unlink()
        raise TransferError(
            f"{dest.name}: the bytes received do not match the file's sha256 (deleted; try again)",
            "CHECKSUM_MISMATCH",
        )
    part.replace(dest)
    return resumed


def _hash_into(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)


def _reason(resp: httpx.Response) -> str:
    try:
        error = resp.json().get("error", {})
        return f"{error.get('code')}: {error.get('message')}"
    except ValueError:
        return resp.text[:200]
