"""GraphQL multipart requests whose file is read from the socket while the resolver stores it.

Strawberry parses a multipart request with Starlette's form parser, which spools every file part into a
temporary file before the operation runs: an upload was written to disk twice and read once more, and the
client waited for both. The GraphQL multipart request spec puts the ``operations`` and ``map`` fields
before the files, so once the map is known we can tell which file part is the last one: that part is not
read ahead but handed to the resolver as a :class:`StreamedUpload`, whose ``read`` parses the next bytes
off the request body. An upload through ``uploadFile`` therefore goes from the socket to storage in one
pass with flat memory. File parts before the last one (requests with several files) and any file part
sent before the map are spooled as Starlette does.

Limits: a form field (``operations``, ``map``) may hold at most ``max_field_size`` bytes, all fields
together ``MAX_FIELDS_TOTAL``, and a request at most ``MAX_PARTS`` parts; the request's
total size is already bounded by the upload-limit middleware (:mod:`graphql_api.routes`), which refuses
a multipart request without ``Content-Length``. A malformed or cut short body is a
:class:`MultipartError`: a 400 while the fields are read, a ``ValidationError`` of ``uploadFile`` once
the resolver reads the file (storage then keeps nothing).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from tempfile import SpooledTemporaryFile
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.requests import ClientDisconnect

MAX_FIELD_SIZE = 1024 * 1024  # operations and map: the same bound as Starlette's form parser
MAX_PARTS = 1000  # fields and files in one request, as Starlette's form parser allows
MAX_FIELDS_TOTAL = 4 * MAX_FIELD_SIZE  # all form fields together, held in memory while parsing
SPOOL_IN_MEMORY = 1024 * 1024  # a spooled file part stays in memory up to this size


class MultipartError(ValueError):
    """The body is not a well-formed multipart request."""


class _Body:
    """The request body as a sequence of multipart events, parsed only as far as someone asks."""

    def __init__(self, stream: AsyncIterator[bytes], boundary: bytes) -> None:
        self._stream = stream
        self._events: deque[tuple[str, Any]] = deque()
        self._field = b""
        self._value = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def _part_begin(self) -> None:
        self._headers = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        self._events.append(("part", self._headers))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._events.append(("data", data[start:end]))

    def _part_end(self) -> None:
        self._events.append(("end", None))

    def _end(self) -> None:
        self._finished = True
        self._events.append(("done", None))

    async def next_event(self) -> tuple[str, Any]:
        while not self._events:
            if self._finished:
                return ("done", None)
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                raise MultipartError("the multipart body ended before its closing boundary") from None
            except ClientDisconnect:
                raise MultipartError("the client went away before the multipart body ended") from None
            try:
                self._parser.write(chunk)
            except Exception as e:  # python-multipart's own error types differ between versions
                raise MultipartError(f"malformed multipart body: {e}") from None
        return self._events.popleft()


class StreamedUpload:
    """A file part read from the request body on demand; the ``read`` of an ``UploadFile``, forwards only."""

    def __init__(self, body: _Body, filename: str, content_type: str | None) -> None:
        self._body = body
        self.filename = filename
        self.content_type = content_type
        self._pending = b""
        self._ended = False

    async def read(self, size: int = -1) -> bytes:
        while not self._pending and not self._ended:
            kind, value = await self._body.next_event()
            if kind == "data":
                self._pending = value
            elif kind == "end":
                self._ended = True
            else:
                raise MultipartError(f"unexpected {kind} inside a file part")
        if size < 0 or size >= len(self._pending):
            chunk, self._pending = self._pending, b""
        else:
            chunk, self._pending = self._pending[:size], self._pending[size:]
        return chunk

    async def close(self) -> None:
        return None


async def parse(
    stream: AsyncIterator[bytes], content_type: str, max_field_size: int = MAX_FIELD_SIZE
) -> tuple[dict[str, str], dict[str, UploadFile | StreamedUpload]]:
    """The form fields and files of a multipart body; the last file mapped is left on the socket."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("the multipart request has no boundary")
    body = _Body(stream, boundary)
    fields: dict[str, str] = {}
    files: dict[str, UploadFile | StreamedUpload] = {}
    mapped: set[str] | None = None
    field_bytes = 0
    while True:
        kind, headers = await body.next_event()
        if kind == "done":
            return fields, files
        if kind != "part":
            raise MultipartError(f"unexpected {kind} between parts")
        if len(fields) + len(files) >= MAX_PARTS:
            raise MultipartError(f"a multipart request may have at most {MAX_PARTS} parts")
        name, filename, part_type = _disposition(headers)
        if filename is None:
            fields[name] = await _field(body, min(max_field_size, MAX_FIELDS_TOTAL - field_bytes))
            field_bytes += len(fields[name].encode())
            if name == "map":
                mapped = _mapped_names(fields[name])
        elif mapped is not None and mapped - files.keys() == {name}:
            files[name] = StreamedUpload(body, filename, part_type)
            return fields, files
        else:
            files[name] = await _spool(body, filename, part_type, headers)


def _disposition(headers: list[tuple[bytes, bytes]]) -> tuple[str, str | None, str | None]:
    found = dict(headers)
    disposition = found.get(b"content-disposition")
    if disposition is None:
        raise MultipartError("a part has no Content-Disposition")
    _, params = parse_options_header(disposition)
    if b"name" not in params:
        raise MultipartError("a part has no name")
    filename = params.get(b"filename")
    part_type = found.get(b"content-type")
    return (
        params[b"name"].decode("utf-8", "replace"),
        None if filename is None else filename.decode("utf-8", "replace"),
        None if part_type is None else part_type.decode("latin-1"),
    )


async def _field(body: _Body, limit: int) -> str:
    value = bytearray()
    while (event := await body.next_event())[0] == "data":
        value += event[1]
        if len(value) > limit:
            raise MultipartError(
                f"a form field is larger than {limit} bytes"
                f" (one may hold {MAX_FIELD_SIZE}, all of them together {MAX_FIELDS_TOTAL})"
            )
    if event[0] != "end":
        raise MultipartError("a form field did not end")
    return value.decode("utf-8", "replace")


def _mapped_names(text: str) -> set[str] | None:
    """The file part names the map refers to; None when it is no map (Strawberry then says so)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return {str(key) for key in value} if isinstance(value, dict) else None


async def _spool(
    body: _Body, filename: str, content_type: str | None, headers: list[tuple[bytes, bytes]]
) -> UploadFile:
    spool = SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed with the form
    upload = UploadFile(
        spool,  # type: ignore[arg-type]  # Starlette's own form parser passes the same object
        filename=filename,
        headers=Headers(raw=[(k, v) for k, v in headers]),
    )
    try:
        while (event := await body.next_event())[0] == "data":
            await upload.write(event[1])
        if event[0] != "end":
            raise MultipartError("a file part did not end")
        await upload.seek(0)
    except BaseException:
        await upload.close()
        raise
    return upload
