"""GA4GH TES 1.1 (``/ga4gh/tes/v1``): jobs created, seen, listed and cancelled as TES tasks.

Workflow engines (py-tes, cwl-tes, Snakemake, Nextflow, Cromwell) follow and cancel remote container tasks
through the Task Execution Service API (``../shared/specs/tes-1.1.openapi.yaml``). Here a task is a job:
its id is the job id, its state the job's (TES names already), and it is visible only with a token of its
own grant (another consumer's id answers 404 like an unknown one). The same bearer token as GraphQL.

- ``GET /service-info``: the service, the storage schemes, and the assets (images) the caller may run.
- ``GET /tasks``: ``view`` (MINIMAL, BASIC, FULL), ``page_size`` (default 256, at most 2047),
  ``page_token`` (the last page's ``next_page_token``), ``state``, ``name_prefix`` and ``tag_key`` /
  ``tag_value``. A task's name, description and tags are kept with its job (core.models.JobDetails); every
  task also has the tag ``wml.asset`` (its asset's id), which is how a list is filtered by asset.
- ``GET /tasks/{id}``: one task in a view; ``POST /tasks/{id}:cancel``: TES's cancel (``{}``, idempotent).
- ``POST /tasks``: a task becomes a job of an asset the token grants (:func:`_planned` says the rules); the
  answer is ``{"id": <job id>}``. A task the asset does not allow is a 400 saying why.

A task's executors are its asset's image with the asset's command, or the task's own commands where the
asset allows them (``consumerCommands``, up to ``maxCommands``, run in order in the one job), and the job's
parameters as ``env``; its inputs and
outputs are the asset's slots at their paths in the container (``/wml/inputs/...``, ``/wml/outputs/...``),
inputs named by ``wml://files/<file id>``, outputs by a signed download URL once they exist. FULL adds the
log tail as the executor's ``stdout``, the full log's URL in ``metadata``, and ``system_logs`` (why a
SYSTEM_ERROR happened).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core import errors as domain
from core.assets import Asset
from core.auth import Principal, bearer_token
from core.backend_mapping import derived_file_id
from core.models import FileOrigin, FileRecord, Job, JobDetails
from core.services import Services
from core.states import JobState

log = structlog.get_logger("wml.tes")

BASE = "/ga4gh/tes/v1"
VIEWS = ("MINIMAL", "BASIC", "FULL")
DEFAULT_PAGE = 256
MAX_PAGE = 2047  # "must be less than 2048"
ASSET_TAG = "wml.asset"
INPUTS = "/wml/inputs"
OUTPUTS = "/wml/outputs"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "status_code": status}, status_code=status)


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def tes_routes(services: Services) -> list[Route]:
    async def caller(request: Request) -> Principal | None:
        token = bearer_token(request.headers.get("authorization"))
        principal = await services.auth.authenticate(token)
        if principal is None:
            log.info("request refused", path=request.url.path, status=401, reason="no valid token")
        return principal

    async def service_info(request: Request) -> Response:
        principal = await caller(request)
        if principal is None:
            return _error(401, "a bearer token is required (the same as for /graphql)")
        assets = await services.store.assets.list_assets(sorted(principal.asset_ids))
        return JSONResponse(
            {
                "id": "org.ga4gh.workflow-middlelayer",
                "name": "workflow-middlelayer",
                "type": {"group": "org.ga4gh", "artifact": "tes", "version": "1.1.0"},
                "description": "Container workloads sold through a dataspace. Images you may run: "
                + (", ".join(f"{a.image} ({a.id})" for a in assets) or "none"),
                "organization": {
                    "name": "workflow-middlelayer",
                    "url": services.settings.resolved_public_url(),
                },
                "version": "0.1.0",
                "storage": ["wml://files/"],
            }
        )

    async def list_tasks(request: Request) -> Response:
        principal = await caller(request)
        if principal is None:
            return _error(401, "a bearer token is required (the same as for /graphql)")
        params = request.query_params
        view = params.get("view", "MINIMAL")
        if view not in VIEWS:
            return _error(400, f"view must be one of {', '.join(VIEWS)}")
        try:
            size = int(params.get("page_size") or DEFAULT_PAGE)
        except ValueError:
            return _error(400, "page_size must be a whole number")
        if not 1 <= size <= MAX_PAGE:
            return _error(400, f"page_size must be between 1 and {MAX_PAGE}")
        state = params.get("state")
        if state is not None and state not in JobState.__members__:
            # A TES state this service never reports (UNKNOWN, PAUSED, PREEMPTED): no task is in it.
            return JSONResponse({"tasks": []})
        keys, values = params.getlist("tag_key"), params.getlist("tag_value")
        wanted = {k: (values[i] if i < len(values) else "") for i, k in enumerate(keys)}
        asset_id = wanted.pop(ASSET_TAG, None) or None  # every task has this tag: "" matches them all
        try:
            page = await services.jobs.list(
                principal,
                state=JobState(state) if state else None,
                asset_id=asset_id,
                first=size,
                after=params.get("page_token"),
                name_prefix=params.get("name_prefix") or None,
                tags=wanted,
            )
        except domain.ValidationError:
            return _error(400, "page_token is not one this service gave out")
        tasks = [await task_view(services, job, view) for job in page.items]
        body: dict[str, Any] = {"tasks": tasks}
        if page.has_next and page.end_cursor:
            body["next_page_token"] = page.end_cursor
        return JSONResponse(body)

    async def get_task(request: Request) -> Response:
        principal = await caller(request)
        if principal is None:
            return _error(401, "a bearer token is required (the same as for /graphql)")
        view = request.query_params.get("view", "MINIMAL")
        if view not in VIEWS:
            return _error(400, f"view must be one of {', '.join(VIEWS)}")
        try:
            job = await services.jobs.get(principal, request.path_params["id"])
        except domain.NotFoundError:
            return _error(404, f"task {request.path_params['id'][:100]!r} not found")
        return JSONResponse(await task_view(services, job, view))

    async def cancel_task(request: Request) -> Response:
        principal = await caller(request)
        if principal is None:
            return _error(401, "a bearer token is required (the same as for /graphql)")
        try:
            await services.jobs.cancel(principal, request.path_params["id"])
        except domain.NotFoundError:
            return _error(404, f"task {request.path_params['id'][:100]!r} not found")
        return JSONResponse({})

    async def create_task(request: Request) -> Response:
        principal = await caller(request)
        if principal is None:
            return _error(401, "a bearer token is required (the same as for /graphql)")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the task must be a JSON object")
        uploaded: list[str] = []  # inline inputs made files: removed again if the task is refused
        try:
            task = await _planned(services, principal, body, uploaded)
            job = await services.jobs.create(
                principal, task.asset_id, task.bindings, task.parameters, task.details
            )
        except (TaskRefused, domain.DomainError) as e:
            for file_id in uploaded:
                await services.files.delete(principal, file_id)
            if isinstance(e, domain.QuotaExceededError):
                return _error(429, e.message)
            # The asset's rules (TaskRefused), or the job rules' (a file or parameter they refuse).
            reason = e.args[0] if isinstance(e, TaskRefused) else e.message
            log.info("task refused", status=400, reason=reason)
            return _error(400, reason)
        return JSONResponse({"id": job.id})

    async def task_or_cancel(request: Request) -> Response:
        """``POST /tasks/{id}:cancel`` (Starlette's path converters cannot split at the colon)."""
        task_id, _, action = request.path_params["rest"].rpartition(":")
        if action != "cancel" or not task_id:
            return _error(404, "no such operation: POST /tasks/{id}:cancel")
        request.path_params["id"] = task_id
        return await cancel_task(request)

    return [
        Route(f"{BASE}/service-info", service_info, methods=["GET"]),
        Route(f"{BASE}/tasks", list_tasks, methods=["GET"]),
        Route(f"{BASE}/tasks", create_task, methods=["POST"]),
        Route(BASE + "/tasks/{id}", get_task, methods=["GET"]),
        Route(BASE + "/tasks/{rest}", task_or_cancel, methods=["POST"]),
    ]


async def task_view(services: Services, job: Job, view: str) -> dict[str, Any]:
    """The job as a TES task in ``view``."""
    task: dict[str, Any] = {"id": job.id, "state": job.state.value}
    if view == "MINIMAL":
        return task
    asset = job.asset
    records = await services.store.files.files_of_jobs([job.id])
    by_id = {r.id: r for r in records if r.origin == FileOrigin.JOB_OUTPUT}
    outputs = {o.name: by_id.get(derived_file_id(job.id, f"output/{o.name}")) for o in asset.outputs}
    inputs = await services.store.files.files_by_ids([b.file_id for b in job.inputs])
    slots = {s.name: s for s in asset.inputs}
    env = {**asset.env, **{k: _text(v) for k, v in job.parameters.items()}}
    commands = job.details.commands or (asset.command_line,)
    task["executors"] = [
        {"image": asset.image, "command": list(command) or ["(the image's entrypoint)"], "env": env}
        for command in commands
    ]
    for key in ("name", "description"):
        if getattr(job.details, key) is not None:
            task[key] = getattr(job.details, key)
    task["inputs"] = [
        {
            "name": b.slot,
            "path": f"{INPUTS}/{slots[b.slot].target}" if b.slot in slots else f"{INPUTS}/{b.slot}",
            "url": f"wml://files/{b.file_id}",
            "type": "DIRECTORY" if b.slot in slots and slots[b.slot].kind.value == "archive" else "FILE",
        }
        for b in job.inputs
        if b.file_id in inputs
    ]
    task["outputs"] = [
        {
            "name": o.name,
            "path": f"{OUTPUTS}/{o.path}",
            "url": await _url(services, outputs.get(o.name)) or f"wml://files/pending/{job.id}/{o.name}",
            "type": "FILE",
        }
        for o in asset.outputs
    ]
    task["resources"] = {
        "cpu_cores": max(1, round(asset.resources.cpu)),
        "ram_gb": round(asset.resources.memory / 1024**3, 3),
    }
    task["tags"] = {**job.details.tags, ASSET_TAG: asset.id}
    task["creation_time"] = _time(job.created_at)
    executor_log: dict[str, Any] = {"exit_code": job.exit_code if job.exit_code is not None else -1}
    if job.started_at is not None:
        executor_log["start_time"] = _time(job.started_at)
    if job.finished_at is not None:
        executor_log["end_time"] = _time(job.finished_at)
    task_log: dict[str, Any] = {
        "logs": [executor_log] if job.started_at is not None else [],
        "outputs": [
            {"url": await _url(services, r) or "", "path": f"{OUTPUTS}/{path}", "size_bytes": str(r.size)}
            for path, r in ((o.path, outputs[o.name]) for o in asset.outputs)
            if r is not None
        ],
    }
    if job.started_at is not None:
        task_log["start_time"] = _time(job.started_at)
    if job.finished_at is not None:
        task_log["end_time"] = _time(job.finished_at)
    if view == "FULL":
        if job.log_tail:
            executor_log["stdout"] = job.log_tail
        log_file = next((r for r in records if r.origin == FileOrigin.JOB_LOG), None)
        if log_file is not None:
            task_log["metadata"] = {"log_url": await _url(services, log_file) or ""}
        if job.state == JobState.SYSTEM_ERROR:
            task_log["system_logs"] = [f"{job.reason}: {job.message or ''}".strip()]
    task["logs"] = [task_log]
    return task


MAX_CONTENT = 128 * 1024  # an inline input's bytes (the minimum TES asks servers to accept)


class TaskRefused(Exception):
    """A task the asset does not allow, or one this service cannot run yet; the message says which."""


@dataclass(frozen=True, slots=True)
class PlannedJob:
    asset_id: str
    bindings: list[tuple[str, str]]
    parameters: dict[str, Any]
    details: JobDetails


async def _planned(services: Services, principal: Principal, body: Any, uploaded: list[str]) -> PlannedJob:
    """The job a TES task asks for, by the asset's rules: its image (or ``tags["wml.asset"]``) names an
    asset the token grants, its command is the asset's, ``env`` are the asset's parameters, its resources
    fit the asset's, inputs go to the asset's input slots by path (inline ``content`` or ``wml://files/<id>``)
    and outputs name declared outputs by path. TaskRefused says what does not fit."""
    if not isinstance(body, dict):
        raise TaskRefused("the task must be a JSON object")
    executors = body.get("executors")
    if not isinstance(executors, list) or not executors or not all(isinstance(e, dict) for e in executors):
        raise TaskRefused("executors is required: a list of the asset's executors")
    first = executors[0]
    given_tags = body.get("tags")
    if given_tags is not None and not (
        isinstance(given_tags, dict) and all(isinstance(v, str) for v in given_tags.values())
    ):
        raise TaskRefused("tags must be an object of strings")
    tags: dict[str, str] = dict(given_tags or {})
    assets = await services.store.assets.list_assets(sorted(principal.asset_ids))
    wanted = tags.pop(ASSET_TAG, None)
    matching = [a for a in assets if (a.id == wanted if wanted else a.image == first.get("image"))]
    if len(matching) != 1:
        what = f"asset {wanted!r}" if wanted else f"image {str(first.get('image'))[:200]!r}"
        more = " (several assets use it: name one with the tag wml.asset)" if len(matching) > 1 else ""
        raise TaskRefused(f"{what} is not an asset this token may run{more}")
    asset = matching[0]
    if len(executors) > asset.max_commands:
        raise TaskRefused(f"asset {asset.id!r} runs at most {asset.max_commands} executor(s) per task")
    parameters: dict[str, Any] = {}
    commands = []
    for executor in executors:
        commands.append(_command(asset, executor))
        env = executor.get("env") or {}
        if not isinstance(env, dict):
            raise TaskRefused("env must be an object of parameter values")
        for name, value in env.items():
            typed = _typed(asset, name, value)
            if parameters.setdefault(name, typed) != typed:
                raise TaskRefused(f"env {name} differs between executors; a task has one value for it")
    _fits(asset, body.get("resources"))
    bindings = [await _bind(services, principal, asset, i, uploaded) for i in body.get("inputs") or []]
    declared = {f"{OUTPUTS}/{o.path}" for o in asset.outputs}
    for output in body.get("outputs") or []:
        if not isinstance(output, dict) or output.get("path") not in declared:
            raise TaskRefused(f"outputs are the asset's declared ones: {sorted(declared)}")
    name, description = body.get("name"), body.get("description")
    if not isinstance(name, str | None) or not isinstance(description, str | None):
        raise TaskRefused("name and description are strings")
    own = asset.command_line
    details = JobDetails(
        name=name,
        description=description,
        tags=tags,
        commands=() if commands == [own] else tuple(commands),
    )
    return PlannedJob(asset.id, bindings, parameters, details)


def _command(asset: Asset, executor: dict[str, Any]) -> tuple[str, ...]:
    """An executor's command; its image must be the asset's, and what it does not support is refused."""
    if executor.get("image") not in (None, asset.image):
        raise TaskRefused(f"asset {asset.id!r} runs the image {asset.image!r}")
    for unsupported in ("stdin", "stdout", "stderr", "workdir"):
        if executor.get(unsupported):
            raise TaskRefused(
                f"executor {unsupported} is not supported here: the worker's output is the task's log, "
                "and it runs in the image's working directory"
            )
    if executor.get("ignore_error"):
        raise TaskRefused("ignore_error is not supported: a task stops at its first failing executor")
    command = executor.get("command")
    if command in (None, []):
        return asset.command_line
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise TaskRefused("an executor's command is a list of strings")
    if tuple(command) != asset.command_line and not asset.consumer_commands:
        raise TaskRefused(
            f"asset {asset.id!r} runs its own command: {list(asset.command_line)} (or leave command empty)"
        )
    return tuple(command)


def _typed(asset: Asset, name: str, value: Any) -> Any:
    """An ``env`` value (TES says strings) as the parameter's type; the job rules check it further."""
    param = next((p for p in asset.parameters if p.name == name), None)
    if param is None or not isinstance(value, str):
        return value  # unknown names and odd values: refused by the job rules, naming them
    try:
        if param.type.value == "integer":
            return int(value)
        if param.type.value == "number":
            return float(value)
    except ValueError:
        raise TaskRefused(f"env {name} must be a {param.type.value}") from None
    if param.type.value == "boolean":
        return value.lower() in ("true", "1", "yes")
    return value


def _fits(asset: Asset, resources: Any) -> None:
    if not isinstance(resources, dict):
        return
    cores, ram = resources.get("cpu_cores"), resources.get("ram_gb")
    if isinstance(cores, int | float) and cores > max(1, asset.resources.cpu):
        raise TaskRefused(f"asset {asset.id!r} runs on {asset.resources.cpu:g} CPU cores, not {cores}")
    if isinstance(ram, int | float) and ram * 1024**3 > asset.resources.memory:
        limit = asset.resources.memory / 1024**3
        raise TaskRefused(f"asset {asset.id!r} runs in {limit:g} GB of memory, not {ram}")


async def _bind(
    services: Services, principal: Principal, asset: Asset, given: Any, uploaded: list[str]
) -> tuple[str, str]:
    """An input to its slot by path: inline content becomes a file of the consumer (its id added to
    ``uploaded``); a URL names one."""
    if not isinstance(given, dict):
        raise TaskRefused("each input must be an object")
    paths = {f"{INPUTS}/{slot.target}": slot for slot in asset.inputs}
    slot = paths.get(str(given.get("path")))
    if slot is None:
        raise TaskRefused(f"inputs go to the asset's input paths: {sorted(paths)}")
    content = given.get("content")
    if isinstance(content, str) and content:
        data = content.encode()
        if len(data) > MAX_CONTENT:
            raise TaskRefused(f"an inline input is at most {MAX_CONTENT} bytes; upload larger ones first")

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        record = await services.files.upload(principal, slot.target.rsplit("/", 1)[-1], None, chunks())
        uploaded.append(record.id)
        return slot.name, record.id
    url = given.get("url")
    if isinstance(url, str) and url.startswith("wml://files/") and len(url) > len("wml://files/"):
        return slot.name, url.removeprefix("wml://files/")
    raise TaskRefused("an input is inline content or wml://files/<file id>; http(s) and s3 URLs come later")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _url(services: Services, record: FileRecord | None) -> str | None:
    return None if record is None else await services.files.download_url(record)
