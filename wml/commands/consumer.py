"""The consumer's commands: ``wml upload``, ``run``, ``download``, ``jobs``, ``job``, ``logs``, ``cancel``,
``files`` and ``rm``, all over the API with the consumer's token (``wml jobs --all`` with the operator's)."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.units import parse_size
from wml.client.api import ApiError, Client
from wml.client.documents import JOB_LOGS
from wml.client.transfer import TransferError, download_file, file_sha256, put_file
from wml.commands.common import JOB_FAILED, OK, Bars, Output, UsageError, client_parser
from wml.watch import describe, follow_job

LARGE = 32 * 1024 * 1024  # files from this size go through createUpload (one PUT of the bytes)
STATES = ("QUEUED", "INITIALIZING", "RUNNING", "COMPLETE", "EXECUTOR_ERROR", "SYSTEM_ERROR", "CANCELING",
          "CANCELED")  # fmt: skip


JOB_HEADERS = {
    "id": "JOB",
    "consumerId": "CONSUMER",
    "assetId": "ASSET",
    "state": "STATE",
    "reason": "REASON",
    "exitCode": "EXIT",
    "createdAt": "CREATED",
    "finishedAt": "FINISHED",
}


def add_consumer_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    upload = client_parser(sub, "upload", common, help="upload files; prints their ids")
    upload.add_argument("files", nargs="+", metavar="FILE")
    upload.add_argument(
        "--large-from",
        type=parse_size,
        default=LARGE,
        metavar="SIZE",
        help="files from this size (32MiB) are announced with createUpload and PUT to the URL it gives",
    )
    upload.set_defaults(client_command=upload_command)

    run = client_parser(sub, "run", common, help="start a job of an asset; prints its id")
    run.add_argument("asset", metavar="ASSET")
    run.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="SLOT=FILE_OR_ID",
        help="bind an input slot to a local file (uploaded first) or an uploaded file's id (repeatable)",
    )
    run.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help='a parameter; the value is read as JSON when it parses (2, true, "text"), else as text',
    )
    run.add_argument("--name", help="a name for the job (shown by wml job, found with jobs(namePrefix))")
    run.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="a label on the job (repeatable)"
    )
    run.add_argument(
        "--follow", "-f", action="store_true", help="print state changes and log lines until the job ends"
    )
    run.add_argument("--large-from", type=parse_size, default=LARGE, metavar="SIZE", help=argparse.SUPPRESS)
    run.set_defaults(client_command=run_command)

    download = client_parser(
        sub, "download", common, help="download a job's outputs (sha256 verified, resumed)"
    )
    download.add_argument("job_id", metavar="JOB")
    download.add_argument("--output", action="append", metavar="NAME", help="only this output (repeatable)")
    download.add_argument("--log", action="store_true", help="the job's saved log too")
    download.add_argument("-o", "--dir", type=Path, default=Path(), metavar="DIR", help="where to (.)")
    download.set_defaults(client_command=download_command)

    jobs = client_parser(sub, "jobs", common, help="list jobs, newest first")
    jobs.add_argument("--state", choices=STATES, help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    jobs.add_argument("--all", action="store_true", help="every consumer's jobs (the operator's token)")
    jobs.set_defaults(client_command=jobs_command)

    job = client_parser(sub, "job", common, help="one job in detail")
    job.add_argument("job_id", metavar="JOB")
    job.set_defaults(client_command=job_command)

    logs = client_parser(sub, "logs", common, help="a job's log lines")
    logs.add_argument("job_id", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="then new lines until the job ends")
    logs.set_defaults(client_command=logs_command)

    cancel = client_parser(sub, "cancel", common, help="stop a job (a finished one is left as it is)")
    cancel.add_argument("job_id", metavar="JOB")
    cancel.set_defaults(client_command=cancel_command)

    files = client_parser(sub, "files", common, help="list files (uploads, outputs, logs), newest first")
    files.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    files.set_defaults(client_command=files_command)

    rm = client_parser(sub, "rm", common, help="delete files")
    rm.add_argument("file_ids", nargs="+", metavar="FILE")
    rm.set_defaults(client_command=rm_command)


# -- upload and run --------------------------------------------------------------------------------


async def _upload(client: Client, bars: Bars, path: Path, large_from: int) -> dict[str, Any]:
    sha256 = await file_sha256(path)
    size = (await asyncio.to_thread(path.stat)).st_size
    advance = bars.add(path.name, size)
    if size >= large_from:
        ticket = await client.create_upload(path.name, size, sha256)
        await put_file(ticket["uploadUrl"], ticket["method"], path, advance, http_timeout=300)
        record = await client.complete_upload(ticket["fileId"])
    else:
        record = await client.upload(path, progress=advance)
    if record.get("sha256") != sha256:
        raise TransferError(f"{path}: the server stored other bytes than were sent", "CHECKSUM_MISMATCH")
    return record


def _existing(files: list[str]) -> list[Path]:
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
    return paths


async def upload_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    paths = _existing(args.files)
    with out.progress() as bars:
        records = [await _upload(client, bars, path, args.large_from) for path in paths]
    out.lines(records, [f"{r['id']}  {r['name']}  {r['size']} bytes  sha256:{r['sha256']}" for r in records])
    return OK


def _pairs(specs: list[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} must be NAME=VALUE: {spec!r}")
        pairs.append((name, value))
    return pairs


def _parameter(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _bindings(specs: list[str]) -> list[tuple[str, Path | None, str]]:
    """``--input`` values: (slot, a local file to upload or None, the value)."""
    bindings: list[tuple[str, Path | None, str]] = []
    for slot, value in _pairs(specs, "--input"):
        if Path(value).is_file():
            bindings.append((slot, Path(value), value))
        elif value.startswith("f_"):
            bindings.append((slot, None, value))
        else:
            raise UsageError(f"--input {slot}: {value!r} is neither a file nor a file id (f_...)")
    return bindings


async def run_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    bindings = _bindings(args.input)
    parameters = {name: _parameter(value) for name, value in _pairs(args.param, "--param")}
    inputs: dict[str, str] = {}
    with out.progress() as bars:
        for slot, path, value in bindings:
            inputs[slot] = (await _upload(client, bars, path, args.large_from))["id"] if path else value
    tags = dict(_pairs(args.tag, "--tag"))
    job = await client.create_job(args.asset, inputs, parameters, name=args.name, tags=tags)
    if not args.follow:
        out.result(job, lambda: out.line(job["id"]))
        return OK
    if out.json:
        out.emit({"job": job})
        final = await follow_job(
            client, job["id"], lambda e: out.emit({"event": e}), lambda t: out.emit({"log": t})
        )
    else:
        out.line(job["id"])
        final = await follow_job(
            client,
            job["id"],
            lambda e: out.line(f"{e['createdAt']}  {describe(e)}"),
            lambda t: out.line(f"    | {t}"),
        )
        if final.get("message") and final["state"] != "COMPLETE":
            out.line(f"    {final['message']}")
    return OK if final["state"] == "COMPLETE" else JOB_FAILED


# -- jobs --------------------------------------------------------------------------------------------


async def _job(client: Client, job_id: str) -> dict[str, Any]:
    job = await client.job(job_id)
    if job is None:
        raise ApiError(f"job {job_id} not found", "NOT_FOUND")
    return job


async def download_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    job = await _job(client, args.job_id)
    wanted = job["outputs"]
    if args.output:
        wanted = [f for f in wanted if f["name"] in args.output]
        missing = sorted(set(args.output) - {f["name"] for f in wanted})
        if missing:
            raise ApiError(f"job {args.job_id} has no output {', '.join(missing)}", "NOT_FOUND")
    if args.log and job["log"]:
        wanted = [*wanted, job["log"]]
    if not wanted and job["finishedAt"] is None:
        raise ApiError(f"job {args.job_id} is {job['state']}: its outputs are saved when it ends", "CONFLICT")
    if not wanted:
        raise ApiError(f"job {args.job_id} has no outputs (it ended {job['state']})", "NOT_FOUND")
    await asyncio.to_thread(args.dir.mkdir, parents=True, exist_ok=True)
    with out.progress() as bars:
        saved = [await _download(bars, record, args.dir) for record in wanted]
    out.lines(saved, [f"{s['path']}  {s['size']} bytes  sha256 verified" for s in saved])
    return OK


async def _download(bars: Bars, record: dict[str, Any], directory: Path) -> dict[str, Any]:
    dest = directory / Path(record["name"]).name  # never a path the server chose
    advance: list[Callable[[int], None]] = []

    def start(done: int, total: int) -> None:
        advance.append(bars.add(dest.name, total, done))

    resumed = await download_file(
        record["downloadUrl"],
        dest,
        sha256=record["sha256"],
        on_start=start,
        progress=lambda n: advance[-1](n),
    )
    return {**record, "path": str(dest), "resumed": resumed}


async def jobs_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    if args.all and (await client.query("query { me { id } }"))["me"] is not None:
        raise ApiError(
            "--all lists every consumer's jobs: it needs the operator's token", "PERMISSION_DENIED"
        )
    jobs = await client.jobs(state=args.state, limit=args.limit)
    columns = ["id", "assetId", "state", "reason", "exitCode", "createdAt", "finishedAt"]
    if args.all:
        columns.insert(1, "consumerId")
    out.result(
        jobs, lambda: out.table([JOB_HEADERS[c] for c in columns], [[j[c] for c in columns] for j in jobs])
    )
    return OK


async def job_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    job = await _job(client, args.job_id)

    def text() -> None:
        for key in ("id", "assetId", "consumerId", "state", "reason", "message", "exitCode", "createdAt",
                    "startedAt", "finishedAt"):  # fmt: skip
            if job.get(key) is not None:
                out.line(f"{key + ':':12} {job[key]}")
        out.line(f"{'parameters:':12} {json.dumps(job['parameters'])}")
        for binding in job["inputs"]:
            out.line(f"{'input:':12} {binding['slot']} = {binding['fileId']}")
        for f in job["outputs"]:
            out.line(f"{'output:':12} {f['name']}  {f['id']}  {f['size']} bytes")
        if job["log"]:
            out.line(f"{'log:':12} {job['log']['id']}  {job['log']['size']} bytes")

    out.result(job, text)
    return OK


async def logs_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    await _job(client, args.job_id)  # a clear NOT_FOUND before the stream
    async for data in client.subscribe(JOB_LOGS, {"id": args.job_id, "follow": args.follow}):
        line = data["jobLogs"]
        if out.json:
            out.emit(line)
        else:
            out.line(line["text"])
    if not args.follow:
        return OK
    return OK if (await _job(client, args.job_id))["state"] == "COMPLETE" else JOB_FAILED


async def cancel_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    job = await client.cancel_job(args.job_id)
    out.result(job, lambda: out.line(f"job {job['id']} is {job['state']}"))
    return OK


async def files_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    files = await client.files(limit=args.limit)
    out.result(
        files,
        lambda: out.table(
            ("FILE", "NAME", "SIZE", "ORIGIN", "JOB", "CREATED", "EXPIRES"),
            [
                (
                    f["id"],
                    f["name"],
                    f["size"],
                    f["origin"],
                    (f["job"] or {}).get("id"),
                    f["createdAt"],
                    f["expiresAt"],
                )
                for f in files
            ],
        ),
    )
    return OK


async def rm_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    deleted = [await client.delete_file(file_id) for file_id in args.file_ids]
    out.lines(deleted, [f"deleted {d['id']}" for d in deleted])
    return OK
