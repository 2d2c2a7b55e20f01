"""GraphQL multipart uploads go from the socket to storage in one pass (graphql_api/multipart.py).

Over a raw socket to the real server: the file part reaches storage while the client is still sending it;
a body cut short or malformed leaves nothing behind and gets a clear answer; a file part sent before the
map (out of the spec's order) is still accepted, spooled the old way; oversized form fields are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from graphql_api import multipart
from tests.support.api import Api

BOUNDARY = "wml-test-boundary"
QUERY = (
    "mutation($file: Upload!) { uploadFile(file: $file) { __typename"
    " ... on File { id size sha256 } ... on Error { message code } } }"
)


def field(name: str, value: str) -> bytes:
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def file_head(name: str, filename: str) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def envelope() -> bytes:
    return field("operations", json.dumps({"query": QUERY, "variables": {"file": None}})) + field(
        "map", '{"0": ["variables.file"]}'
    )


CLOSING = f"\r\n--{BOUNDARY}--\r\n".encode()


async def open_upload(api: Api, token: str, length: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with the request line and headers of a multipart POST of ``length`` bytes sent."""
    address = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    writer.write(
        (
            "POST /graphql HTTP/1.1\r\n"
            f"Host: {address.netloc}\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    return reader, writer


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    raw = await asyncio.wait_for(reader.read(), 60)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def storage_files(api: Api) -> list[Path]:
    """Every file under the storage directory, temporary ones included."""
    root = api.services.settings.data_dir / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def wait_for_storage_bytes(api: Api, at_least: int) -> None:
    """Until the storage directory holds ``at_least`` bytes in some file (0: until a file exists)."""
    for _ in range(600):
        files = storage_files(api)
        if files and sum(p.stat().st_size for p in files) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"storage never held {at_least} bytes while the body was still being sent")


async def test_the_file_reaches_storage_while_the_client_is_still_sending(api: Api) -> None:
    token = await api.consumer("alice")
    first, second = b"a" * (4 * 1024 * 1024), b"b" * (1024 * 1024)
    body = envelope() + file_head("0", "big.bin") + first + second + CLOSING
    reader, writer = await open_upload(api, token, len(body))
    writer.write(body[: len(body) - len(second) - len(CLOSING)])
    await writer.drain()
    # Not spooled first: most of the file is already in storage before the rest was sent.
    await wait_for_storage_bytes(api, len(first) // 2)
    writer.write(second + CLOSING)
    await writer.drain()
    status, result = await answer(reader)
    writer.close()
    assert status == 200, result
    uploaded = result["data"]["uploadFile"]  # type: ignore[index]
    assert uploaded["__typename"] == "File"
    assert uploaded["size"] == len(first) + len(second)
    assert uploaded["sha256"] == hashlib.sha256(first + second).hexdigest()


async def test_a_body_cut_short_leaves_nothing_in_storage(api: Api) -> None:
    token = await api.consumer("alice")
    content = b"x" * (2 * 1024 * 1024)
    body = envelope() + file_head("0", "cut.bin") + content + CLOSING
    _, writer = await open_upload(api, token, len(body))
    writer.write(body[: len(body) // 2])
    await writer.drain()
    await wait_for_storage_bytes(api, 0)  # the upload has started
    writer.close()  # the client goes away mid-file
    await writer.wait_closed()
    for _ in range(200):
        if not storage_files(api):
            break
        await asyncio.sleep(0.05)
    assert storage_files(api) == []
    files = await api.data("{ files { nodes { id } } }", token=token)
    assert files["files"]["nodes"] == []


async def test_a_body_without_its_closing_boundary_is_refused_and_nothing_is_kept(api: Api) -> None:
    token = await api.consumer("alice")
    body = envelope() + file_head("0", "open.bin") + b"never closed"
    reader, writer = await open_upload(api, token, len(body))
    writer.write(body)
    await writer.drain()
    status, result = await answer(reader)
    writer.close()
    text = json.dumps(result)
    assert status in (200, 400), result
    assert "Traceback" not in text and "Internal" not in text, result
    if status == 200:  # the operation ran and refused the truncated file as a typed error
        assert result["data"]["uploadFile"]["__typename"] != "File", result  # type: ignore[index]
    assert storage_files(api) == []


async def test_a_file_sent_before_the_map_is_still_uploaded(api: Api) -> None:
    token = await api.consumer("alice")
    content = b"out of order"
    operations = field("operations", json.dumps({"query": QUERY, "variables": {"file": None}}))
    body = operations + file_head("0", "early.bin") + content + b"\r\n"
    body += field("map", '{"0": ["variables.file"]}') + f"--{BOUNDARY}--\r\n".encode()
    reader, writer = await open_upload(api, token, len(body))
    writer.write(body)
    await writer.drain()
    status, result = await answer(reader)
    writer.close()
    assert status == 200, result
    assert result["data"]["uploadFile"]["sha256"] == hashlib.sha256(content).hexdigest()  # type: ignore[index]


async def test_an_oversized_form_field_is_refused_with_400(api: Api) -> None:
    token = await api.consumer("alice")
    body = field("operations", "x" * (1024 * 1024 + 1)) + f"--{BOUNDARY}--\r\n".encode()
    reader, writer = await open_upload(api, token, len(body))
    writer.write(body)
    await writer.drain()
    status, result = await answer(reader)
    writer.close()
    assert status == 400
    assert result["errors"][0]["extensions"]["code"] == "BAD_REQUEST"  # type: ignore[index]
    assert "larger than" in result["errors"][0]["message"]  # type: ignore[index]


async def test_too_many_parts_or_too_much_field_text_is_refused() -> None:
    # The parser itself (the HTTP answer to a MultipartError is the 400 shown above): a body this large
    # is answered before it is all read, and the reset of the unread rest can swallow the answer.
    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    closing = f"--{BOUNDARY}--\r\n".encode()
    many = b"".join(field(f"f{i}", "x") for i in range(multipart.MAX_PARTS + 1)) + closing
    big = b"".join(field(f"f{i}", "x" * multipart.MAX_FIELD_SIZE) for i in range(5)) + closing
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    with pytest.raises(multipart.MultipartError, match=f"at most {multipart.MAX_PARTS} parts"):
        await multipart.parse(chunks(many), content_type)
    with pytest.raises(multipart.MultipartError, match="larger than"):
        await multipart.parse(chunks(big), content_type)
    fine = b"".join(field(f"f{i}", "x" * multipart.MAX_FIELD_SIZE) for i in range(4)) + closing
    fields, files = await multipart.parse(chunks(fine), content_type)
    assert len(fields) == 4 and files == {}
