"""Peak memory of transfers: 100 MiB and 1 GiB through the API and through the side-car, on S3 and on disk.

Shows that the server's and the side-car's peak resident memory stay within a small bound that does not
grow with the file size (issue 5). For each storage backend (``s3``: moto's S3 server as a separate
process on loopback; ``file``: local disk) and each size it:

1. starts ``wml serve`` as a subprocess on a fresh data directory and creates a consumer;
2. uploads the file through the API (GraphQL multipart: the server streams it to storage), then downloads
   it through the API's signed ``GET /files/{id}/content`` (the server streams it from storage) and, on
   S3, through the presigned ``downloadUrl`` too; checks every sha256;
3. stops the server and takes its peak RSS (``VmHWM`` from ``/proc`` while it runs, and ``ru_maxrss``
   from ``wait4``);
4. runs ``wml sidecar stage-out`` as a subprocess on the same file and takes its peak RSS, throughput
   and the sha256 in the output manifest.

Usage: ``.venv/bin/python bench/transfer_memory.py [--sizes 100M,1G] [--backends s3,file]``. Writes
``bench/results/transfer_memory.json`` and prints a table. Needs about 4x the largest size in free disk.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import free_port, proc_kib, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "transfer_memory.json"
PYTHON = sys.executable
MiB = 1024 * 1024
CHUNK = MiB
BUCKET = "wml-bench"
KEYS = {"WML_S3_ACCESS_KEY_ID": "bench-key", "WML_S3_SECRET_ACCESS_KEY": "bench-secret"}
SECRET_KEY = "bench-signing-key"
UPLOAD = (
    "mutation($file: Upload!) { uploadFile(file: $file) { __typename"
    " ... on File { id size sha256 downloadUrl } ... on Error { message code } } }"
)


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
    env = {
        "WML_CATALOG_DIR": str(bench_catalog(data_dir.parent / "catalog")),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        "WML_DATA_DIR": str(data_dir),
        "WML_HOST": "127.0.0.1",
        "WML_PORT": str(port),
        "WML_SECRET_KEY": SECRET_KEY,
        "WML_ADMIN_TOKEN": "bench-admin",
        "WML_LOG_LEVEL": "WARNING",
        "WML_MAX_UPLOAD_SIZE": str(64 * 1024 * MiB),
        **KEYS,
    }
    if storage:
        env["WML_STORAGE"] = storage
    return env


def create_token(env: dict[str, str]) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "wml.cli", "consumers", "create", "bench", "--asset", "dummy-job"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout.split("token (shown once): ", 1)[1].split()[0]


def timed_hash_download(client: httpx.Client, url: str) -> tuple[str, float]:
    hasher = hashlib.sha256()
    started = time.perf_counter()
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest(), time.perf_counter() - started


def api_transfers(base: str, token: str, source: Path, size: int, s3: bool) -> dict[str, Any]:
    """Upload through the API, download through the API (and presigned on S3); sha256 and speed."""
    from core.signing import UrlSigner

    result: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {token}"}) as client:
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
        api_url = UrlSigner(SECRET_KEY.encode(), base).url("GET", uploaded["id"], 3600)[0]
        result["api_download_sha256"], result["download_seconds"] = timed_hash_download(client, api_url)
        if s3:
            presigned = uploaded["downloadUrl"]
            result["presigned_download_sha256"], result["presigned_download_seconds"] = timed_hash_download(
                client, presigned
            )
    result["upload_mib_s"] = size / MiB / result["upload_seconds"]
    result["download_mib_s"] = size / MiB / result["download_seconds"]
    return result


def run_server(work: Path, storage: str | None, source: Path, size: int) -> dict[str, Any]:
    port = free_port()
    env = environment(work / "data", storage, port)
    (work / "data").mkdir(parents=True)
    server = subprocess.Popen([PYTHON, "-m", "wml.cli", "serve"], env=env, stdout=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/readyz")
        token = create_token(env)
        baseline = proc_kib(server.pid, "VmRSS")
        result = api_transfers(base, token, source, size, s3=storage is not None)
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
    command = [
        PYTHON,
        "-m",
        "wml.cli",
        "sidecar",
        "stage-out",
        "--manifest",
        str(manifest),
        "--root",
        str(outputs),
    ]
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


def measure(backend: str, size: int, endpoint: str | None, scratch: Path) -> dict[str, Any]:
    work = scratch / f"{backend}-{size}"
    work.mkdir()
    source = work / "source.bin"
    expected = make_source(source, size)
    storage = f"s3://{BUCKET}?endpoint={endpoint}&region=us-east-1" if backend == "s3" else None
    run: dict[str, Any] = {"backend": backend, "size_bytes": size, "size": label(size)}
    run.update(run_server(work, storage, source, size))
    run.update(run_stage_out(work, storage, source, size))
    hashes = [v for k, v in run.items() if k.endswith("_sha256")]
    run["sha256_match"] = all(h == expected for h in hashes) and len(hashes) >= 3
    source.unlink()
    return run


def label(size: int) -> str:
    return f"{size // (1024 * MiB)} GiB" if size % (1024 * MiB) == 0 else f"{size // MiB} MiB"


def parse_size(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([MG])", text.strip().upper()).groups()  # type: ignore[union-attr]
    return int(number) * (MiB if unit == "M" else 1024 * MiB)


def report(runs: list[dict[str, Any]]) -> None:
    columns = ("backend", "size", "server peak", "side-car peak", "up MiB/s", "down MiB/s", "stage-out MiB/s")
    print("  ".join(f"{c:>15}" for c in columns), " sha256")
    for run in runs:
        cells = (
            run["backend"],
            run["size"],
            f"{run['server_vmhwm_kib'] / 1024:.1f} MiB",
            f"{run['sidecar_ru_maxrss_kib'] / 1024:.1f} MiB",
            f"{run['upload_mib_s']:.1f}",
            f"{run['download_mib_s']:.1f}",
            f"{run['stage_out_mib_s']:.1f}",
        )
        print("  ".join(f"{c:>15}" for c in cells), " ok" if run["sha256_match"] else " MISMATCH")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M,1G", help="comma-separated sizes (M or G suffix)")
    parser.add_argument("--backends", default="s3,file", help="comma-separated: s3, file")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="wml-bench-") as scratch, moto_s3() as endpoint:
        for backend in backends:
            for size in sizes:
                print(f"-- {backend} {label(size)}", flush=True)
                runs.append(measure(backend, size, endpoint, Path(scratch)))
    document = {
        "benchmark": "transfer_memory",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
        "notes": "peak RSS: server VmHWM read from /proc before it stops; side-car ru_maxrss from wait4",
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    report(runs)
    return 0 if all(run["sha256_match"] for run in runs) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
