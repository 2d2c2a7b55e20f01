"""File transfer: 100 MiB and 1 GiB through the API, against a plain file copy and a bare streaming endpoint.

For each storage backend (``file``: local disk; ``s3``: moto's S3 server as its own process on loopback)
and each size, in one run:

- **plain copy**: ``shutil.copyfile`` of the source file on the same disk (what the disk itself allows);
- **bare endpoint**: a plain Starlette app served by uvicorn in its own process (``--serve-bare``) that
  streams a raw ``PUT`` body into storage and a ``GET`` back out, with no GraphQL, no database, no
  hashing: into a file in 1 MiB writes, fsynced before the answer as the file storage backend does
  (``file``), or into S3 as a multipart upload of 8 MiB parts with 4 in flight through aiobotocore, the
  service's defaults (``s3``);
- **service**: ``wml serve`` on a fresh data directory: the upload as a GraphQL multipart request
  (``uploadFile``), on ``file`` also the two-step upload (``createUpload``, a ``PUT`` of the raw body to
  the signed URL, ``completeUpload``), and the download through the signed ``GET /files/{id}/content``
  (on S3 also through the presigned ``downloadUrl``, which goes to storage directly); every sha256 is
  checked. The server's peak RSS (``VmHWM``) is read before it stops: it should be the same for both
  sizes;
- **side-car**: ``wml sidecar stage-out`` of the same file into the same storage, its peak RSS from wait4.

The ratios are the service's MiB/s over the bare endpoint's for the same direction, size and backend
(target: at least 0.7 for the multipart upload, the signed ``PUT`` upload and the download alike). Every
transfer is made ``--repeats`` times (3) on each side: each MiB/s is stored as min/median/max over the
repeats, the ratios are of the medians (the verdict), and the ratio of each repeat pair shows their
spread. A backend and size that cannot be measured is recorded as ``not_measured`` with the reason.

Usage: ``.venv/bin/python bench/transfer.py [--sizes 100M,1G] [--backends file,s3] [--repeats 3]``. Writes
``bench/results/transfer.json``. Needs about 4x the largest size in free disk.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    SECRET_KEY,
    create_token,
    free_port,
    measured_or_reason,
    proc_kib,
    spread,
    wait_until_up,
    write_result,
)
from bench.common import environment as common_environment

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MiB = 1024 * 1024
CHUNK = MiB
PART_SIZE = 8 * MiB  # the S3 backend's default part size and concurrency, for the bare endpoint too
PARTS_IN_FLIGHT = 4
BUCKET = "wml-bench"
KEYS = {"WML_S3_ACCESS_KEY_ID": "bench-key", "WML_S3_SECRET_ACCESS_KEY": "bench-secret"}
UPLOAD = (
    "mutation($file: Upload!) { uploadFile(file: $file) { __typename"
    " ... on File { id size sha256 downloadUrl } ... on Error { message code } } }"
)
CREATE_UPLOAD = (
    "mutation($input: CreateUploadInput!) { createUpload(input: $input) { __typename"
    " ... on UploadTicket { fileId uploadUrl method } ... on Error { message code } } }"
)
COMPLETE_UPLOAD = (
    "mutation($id: ID!) { completeUpload(fileId: $id) { __typename"
    " ... on File { id size sha256 } ... on Error { message code } } }"
)


# -- the bare streaming endpoint (runs in its own process) ---------------------------------------------


def bare_app(root: str, endpoint: str | None) -> Any:
    """PUT streams the raw body into storage, GET streams it back; nothing else."""
    import asyncio

    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    session = get_session()

    # The client settings that matter for speed are the service's: no extra checksums beyond S3's own.
    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )

    def s3_client() -> Any:
        return session.create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEYS["WML_S3_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["WML_S3_SECRET_ACCESS_KEY"],
            config=config,
        )

    def durable(sink: Any) -> None:
        sink.flush()
        os.fsync(sink.fileno())  # acknowledged means on disk, as in the file storage backend

    async def put_file(request: Request, key: str) -> int:
        size = 0
        with open(os.path.join(root, key), "wb") as sink:
            pending = bytearray()
            async for chunk in request.stream():
                pending += chunk
                if len(pending) >= CHUNK:
                    await asyncio.to_thread(sink.write, bytes(pending))
                    size += len(pending)
                    pending.clear()
            await asyncio.to_thread(sink.write, bytes(pending))
            size += len(pending)
            await asyncio.to_thread(durable, sink)
        return size

    async def put_s3(request: Request, key: str) -> int:
        async with s3_client() as client:
            upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
            slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
            parts: dict[int, str] = {}

            async def send(number: int, body: bytes) -> None:
                try:
                    answer = await client.upload_part(
                        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=body
                    )
                    parts[number] = answer["ETag"]
                finally:
                    slots.release()

            size, number, pending = 0, 0, bytearray()
            async with asyncio.TaskGroup() as group:
                async for chunk in request.stream():
                    pending += chunk
                    size += len(chunk)
                    while len(pending) >= PART_SIZE:
                        await slots.acquire()
                        number += 1
                        group.create_task(send(number, bytes(pending[:PART_SIZE])))
                        del pending[:PART_SIZE]
                if pending:
                    await slots.acquire()
                    number += 1
                    group.create_task(send(number, bytes(pending)))
            await client.complete_multipart_upload(
                Bucket=BUCKET,
                Key=key,
                UploadId=upload["UploadId"],
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": parts[n]} for n in sorted(parts)]},
            )
        return size

    async def put(request: Request) -> Response:
        key = request.path_params["key"]
        size = await (put_s3(request, key) if endpoint else put_file(request, key))
        return Response(str(size), status_code=201)

    async def file_chunks(key: str) -> Any:
        with open(os.path.join(root, key), "rb") as source:
            while chunk := await asyncio.to_thread(source.read, CHUNK):
                yield chunk

    async def s3_chunks(key: str) -> Any:
        async with s3_client() as client:
            answer = await client.get_object(Bucket=BUCKET, Key=key)
            async with answer["Body"] as body:
                while chunk := await body.read(CHUNK):
                    yield chunk

    async def get(request: Request) -> Response:
        key = request.path_params["key"]
        if endpoint:
            async with s3_client() as client:
                size = (await client.head_object(Bucket=BUCKET, Key=key))["ContentLength"]
        else:
            size = os.stat(os.path.join(root, key)).st_size
        chunks = s3_chunks(key) if endpoint else file_chunks(key)
        return StreamingResponse(chunks, headers={"Content-Length": str(size)})

    return Starlette(routes=[Route("/raw/{key}", put, methods=["PUT"]), Route("/raw/{key}", get)])


def serve_bare(port: int, root: str, endpoint: str | None) -> None:
    import uvicorn

    uvicorn.run(bare_app(root, endpoint), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def bare_server(root: Path, endpoint: str | None) -> Iterator[tuple[str, int]]:
    port = free_port()
    command = [PYTHON, __file__, "--serve-bare", str(port), "--bare-root", str(root)]
    if endpoint:
        command += ["--bare-endpoint", endpoint]
    process = subprocess.Popen(command, cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_port(port)
        yield url, process.pid
    finally:
        stop(process)


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


# -- helpers ---------------------------------------------------------------------------------------------


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, reap, and return the process's peak RSS in KiB (ru_maxrss from wait4)."""
    process.send_signal(signal.SIGTERM)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return int(usage.ru_maxrss)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server as its own process (its memory is not ours), with the bench bucket."""
    port = free_port()
    moto = subprocess.Popen(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{endpoint}/moto-api/")
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=KEYS["WML_S3_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["WML_S3_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        client.close()
        yield endpoint
    finally:
        moto.terminate()
        moto.wait(30)


def make_source(path: Path, size: int) -> str:
    """A file of ``size`` incompressible bytes; returns its sha256."""
    hasher = hashlib.sha256()
    block = os.urandom(CHUNK)
    with path.open("wb") as sink:
        for index in range(0, size, CHUNK):
            chunk = (index.to_bytes(8, "big") + block[8:])[: min(CHUNK, size - index)]
            hasher.update(chunk)
            sink.write(chunk)
    return hasher.hexdigest()


def bench_catalog(directory: Path) -> Path:
    """The example asset with room for the largest size (its own input slots stop at 1 GiB)."""
    spec = yaml.safe_load((ROOT / "assets" / "dummy-job.yaml").read_text())
    for slot in spec["inputs"]:
        slot["maxSize"] = "64GiB"
    spec["local"] = {"command": ["sh", str(ROOT / "dummy-job" / "entrypoint.sh")]}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dummy-job.yaml").write_text(yaml.safe_dump(spec))
    return directory


def environment(data_dir: Path, storage: str | None, port: int) -> dict[str, str]:
    settings: dict[str, Any] = {
        "catalog_dir": bench_catalog(data_dir.parent / "catalog"),
        "max_upload_size": 64 * 1024 * MiB,
        **({"storage": storage} if storage else {}),
    }
    return {**common_environment(data_dir.parent, port, data=data_dir.name, **settings), **KEYS}


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def length(size: int) -> dict[str, str]:
    """Uploads announce their length, as the multipart upload does (no chunked transfer encoding)."""
    return {"Content-Length": str(size)}


def timed_hash_download(client: httpx.Client, url: str) -> tuple[str, float]:
    hasher = hashlib.sha256()
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest(), time.perf_counter() - started


def graphql(client: httpx.Client, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    data: dict[str, Any] = next(iter(response.json()["data"].values()))
    if "message" in data:
        raise RuntimeError(f"refused: {data}")
    return data


# -- the measurements ------------------------------------------------------------------------------------


def plain_copy(source: Path, size: int) -> dict[str, Any]:
    target = source.with_name("plain-copy.bin")
    started = time.perf_counter()
    shutil.copyfile(source, target)
    seconds = time.perf_counter() - started
    target.unlink()
    return {"copy_seconds": seconds, "copy_mib_s": size / MiB / seconds}


def bare_transfers(work: Path, endpoint: str | None, source: Path, size: int, repeats: int) -> dict[str, Any]:
    root = work / "bare-store"
    root.mkdir()
    runs = []
    with bare_server(root, endpoint) as (url, pid), httpx.Client(base_url=url, timeout=600) as client:
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.put("/raw/object", content=file_chunks(source), headers=length(size))
            upload_seconds = time.perf_counter() - started
            response.raise_for_status()
            if int(response.text) != size:
                raise RuntimeError(f"bare endpoint stored {response.text} bytes of {size}")
            digest, download_seconds = timed_hash_download(client, "/raw/object")
            runs.append(
                {
                    "upload_seconds": upload_seconds,
                    "download_seconds": download_seconds,
                    "download_sha256": digest,
                }
            )
        peak = proc_kib(pid, "VmHWM")
    shutil.rmtree(root)
    return {**combined(runs, size), "server_vmhwm_kib": peak}


def combined(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """The median of each ``*_seconds`` over repeated runs (with its MiB/s, and the MiB/s of each repeat as
    a spread under ``*_mib_s_spread``); each sha256 if all agree."""
    result: dict[str, Any] = {"repeats": len(runs)}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if key.endswith("_seconds"):
            name = key.removesuffix("_seconds")
            result[key] = statistics.median(values)
            result[name + "_mib_s"] = size / MiB / result[key]
            result[name + "_mib_s_spread"] = spread([size / MiB / v for v in values])
        elif key.endswith("_sha256"):
            result[key] = values[0] if len(set(values)) == 1 else "differs between repeats"
    return result


def api_transfers(base: str, token: str, source: Path, size: int, s3: bool, repeats: int) -> dict[str, Any]:
    """Upload through the API (multipart; and two-step on disk), download through the API (and presigned)."""
    with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {token}"}) as client:
        runs = [api_round(client, base, source, size, s3) for _ in range(repeats)]
    return combined(runs, size)


def api_round(client: httpx.Client, base: str, source: Path, size: int, s3: bool) -> dict[str, Any]:
    from core.signing import UrlSigner

    result: dict[str, Any] = {}
    started = time.perf_counter()
    with source.open("rb") as body:
        response = client.post(
            "/graphql",
            data={
                "operations": json.dumps({"query": UPLOAD, "variables": {"file": None}}),
                "map": '{"0": ["variables.file"]}',
            },
            files={"0": ("source.bin", body, "application/octet-stream")},
        )
    result["upload_seconds"] = time.perf_counter() - started
    uploaded = response.json()["data"]["uploadFile"]
    if uploaded["__typename"] != "File":
        raise RuntimeError(f"upload refused: {uploaded}")
    result["upload_sha256"] = uploaded["sha256"]
    if not s3:  # on S3 the signed PUT goes to storage directly, not through the API
        started = time.perf_counter()
        ticket = graphql(client, CREATE_UPLOAD, {"input": {"name": "two-step.bin", "size": size}})
        put = client.put(ticket["uploadUrl"], content=file_chunks(source), headers=length(size))
        put.raise_for_status()
        completed = graphql(client, COMPLETE_UPLOAD, {"id": ticket["fileId"]})
        result["put_upload_seconds"] = time.perf_counter() - started
        result["put_upload_sha256"] = completed["sha256"]
    api_url = UrlSigner(SECRET_KEY.encode(), base).url("GET", uploaded["id"], 3600)[0]
    result["api_download_sha256"], result["download_seconds"] = timed_hash_download(client, api_url)
    if s3:
        result["presigned_download_sha256"], result["presigned_download_seconds"] = timed_hash_download(
            client, uploaded["downloadUrl"]
        )
    return result


def run_server(work: Path, storage: str | None, source: Path, size: int, repeats: int) -> dict[str, Any]:
    port = free_port()
    env = environment(work / "data", storage, port)  # creates the data directory
    server = subprocess.Popen([PYTHON, "-m", "wml.cli", "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/readyz")
        token = create_token(env)
        baseline = proc_kib(server.pid, "VmRSS")
        result = api_transfers(base, token, source, size, storage is not None, repeats)
        result["server_vmhwm_kib"] = proc_kib(server.pid, "VmHWM")
        result["server_rss_after_start_kib"] = baseline
    finally:
        result_rss = stop(server) if server.poll() is None else 0
    result["server_ru_maxrss_kib"] = result_rss
    return result


def run_stage_out(work: Path, storage: str | None, source: Path, size: int) -> dict[str, Any]:
    outputs = work / "outputs"
    outputs.mkdir()
    os.link(source, outputs / "result.bin")  # the same bytes, no copy
    manifest = work / "stage-out.json"
    result_path = work / "outputs.json"
    entry = {"name": "result", "path": "result.bin", "key": f"bench/{size}/result"}
    manifest.write_text(json.dumps({"outputs": [entry], "result_path": str(result_path)}))
    env = environment(work / "sidecar-home", storage or f"file://{work / 'sidecar-store'}", 0)
    command = [PYTHON, "-m", "wml.cli", "sidecar", "stage-out", "--manifest", str(manifest)]
    command += ["--root", str(outputs)]
    started = time.perf_counter()
    sidecar = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)  # stdout: the manifest line
    _, status, usage = os.wait4(sidecar.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"stage-out exited {os.waitstatus_to_exitcode(status)}")
    written = json.loads(result_path.read_text())["outputs"][0]
    return {
        "sidecar_ru_maxrss_kib": int(usage.ru_maxrss),
        "stage_out_seconds": seconds,
        "stage_out_mib_s": size / MiB / seconds,
        "stage_out_sha256": written["sha256"],
    }


def measure(backend: str, size: int, endpoint: str | None, scratch: Path, repeats: int) -> dict[str, Any]:
    work = scratch / f"{backend}-{size}"
    work.mkdir()
    try:
        source = work / "source.bin"
        expected = make_source(source, size)
        s3 = backend == "s3"
        storage = f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1" if s3 else None
        run: dict[str, Any] = {"backend": backend, "size_bytes": size, "size": label(size)}
        run["plain_copy"] = plain_copy(source, size)
        run["bare"] = bare_transfers(work, endpoint if s3 else None, source, size, repeats)
        run["service"] = run_server(work, storage, source, size, repeats)
        run["sidecar"] = run_stage_out(work, storage, source, size)
        parts = (run["bare"], run["service"], run["sidecar"])
        hashes = [v for part in parts for k, v in part.items() if k.endswith("_sha256")]
        run["sha256_match"] = all(h == expected for h in hashes) and len(hashes) >= 4
        run["ratio_upload_service_over_bare"] = run["service"]["upload_mib_s"] / run["bare"]["upload_mib_s"]
        run["ratio_download_service_over_bare"] = (
            run["service"]["download_mib_s"] / run["bare"]["download_mib_s"]
        )
        if not s3:
            run["ratio_put_upload_service_over_bare"] = (
                run["service"]["put_upload_mib_s"] / run["bare"]["upload_mib_s"]
            )
        # The spread of each ratio: repeat i of the service over repeat i of the bare endpoint.
        for direction, bare_key in (("upload", "upload"), ("download", "download"), ("put_upload", "upload")):
            service_values = run["service"].get(f"{direction}_mib_s_spread", {}).get("values")
            if service_values:
                bare_values = run["bare"][f"{bare_key}_mib_s_spread"]["values"]
                run[f"ratio_{direction}_spread"] = spread(
                    [a / b for a, b in zip(service_values, bare_values, strict=True)]
                )
        return run
    finally:
        shutil.rmtree(work, ignore_errors=True)


def label(size: int) -> str:
    return f"{size // (1024 * MiB)} GiB" if size % (1024 * MiB) == 0 else f"{size // MiB} MiB"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([MG])", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 100M or 1G)")
    return int(match[1]) * (MiB if match[2] == "M" else 1024 * MiB)


def report(runs: list[dict[str, Any]]) -> None:
    columns = ("backend", "size", "copy", "bare up", "api up", "bare down", "api down", "server peak")
    print("  ".join(f"{c:>11}" for c in columns), " sha256")
    for run in runs:
        if "not_measured" in run:
            print(f"{run['backend']:>11}  {run['size']:>11}  not measured: {run['not_measured']}")
            continue
        cells = (
            run["backend"],
            run["size"],
            f"{run['plain_copy']['copy_mib_s']:.0f}",
            f"{run['bare']['upload_mib_s']:.0f}",
            f"{run['service']['upload_mib_s']:.0f}",
            f"{run['bare']['download_mib_s']:.0f}",
            f"{run['service']['download_mib_s']:.0f}",
            f"{run['service']['server_vmhwm_kib'] / 1024:.0f} MiB",
        )
        print("  ".join(f"{c:>11}" for c in cells), " ok" if run["sha256_match"] else " MISMATCH")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M,1G", help="comma-separated sizes (M or G suffix)")
    parser.add_argument("--backends", default="file,s3", help="comma-separated: file, s3")
    parser.add_argument("--repeats", type=int, default=3, help="transfers of each kind per size and side")
    parser.add_argument("--s3-sizes", help="the sizes on S3 if not --sizes (moto's server is slow)")
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare-root", help=argparse.SUPPRESS)
    parser.add_argument("--bare-endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.bare_root, args.bare_endpoint)
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    s3_sizes = [parse_size(s) for s in args.s3_sizes.split(",")] if args.s3_sizes else sizes
    backends = [b.strip() for b in args.backends.split(",")]
    runs = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wml-bench-") as scratch, moto_s3() as endpoint:
        for backend in backends:
            for size in s3_sizes if backend == "s3" else sizes:
                print(f"-- {backend} {label(size)}", flush=True)
                measured = measured_or_reason(
                    f"{backend} {label(size)}",
                    partial(measure, backend, size, endpoint, Path(scratch), args.repeats),
                )
                runs.append({"backend": backend, "size_bytes": size, "size": label(size), **measured})
    write_result(
        "transfer",
        {
            "settings": {
                "sizes": [label(s) for s in sizes],
                "s3_sizes": [label(s) for s in s3_sizes],
                "backends": backends,
                "repeats": args.repeats,
            },
            "notes": "MiB/s; server peak RSS is VmHWM read from /proc before it stops; side-car from wait4",
            "elapsed_s": time.monotonic() - started,
            "runs": runs,
        },
    )
    report(runs)
    return 0 if all(run.get("sha256_match", True) for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
