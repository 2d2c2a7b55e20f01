"""The job service: validate a request against the asset and the grant, persist it, hand it on.

Everything a consumer can do to a job passes here; the supervisor then owns the job's life.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import WorkflowBackend
from core.assets import Asset, InputSlot, InputSlotKind
from core.auth import Principal
from core.backend_mapping import run_needs
from core.errors import ConflictError, NotFoundError, QuotaExceededError, UnavailableError, ValidationError
from core.live.bus import EventBus
from core.metrics import Metrics
from core.models import MAX_TAG_KEY, MAX_TAG_VALUE, FileStatus, InputBinding, Job, JobDetails, Page, new_id
from core.parameters import resolve_parameters
from core.states import JobState
from core.store import LIVE_STATES, Store
from sidecar.dotenv import MAX_DOTENV_BYTES, accepted, parse_dotenv

if TYPE_CHECKING:
    from core.supervisor import Supervisor

# Bounds on what a consumer may say of a job (core.models.JobDetails).
MAX_NAME = 200
MAX_DESCRIPTION = 4096
MAX_TAGS = 32
MAX_COMMAND_BYTES = 64 * 1024  # all of a job's commands together
MAX_COMMAND_ARGS = 256


def check_details(asset: Asset, details: JobDetails) -> None:
    """A job's name, description, tags and commands, bounded; commands only where the asset allows them
    (its own command is always allowed), at most ``maxCommands`` of them. ValidationError says which."""
    if details.name is not None and len(details.name) > MAX_NAME:
        raise ValidationError(f"a job's name is at most {MAX_NAME} characters", field="name")
    if details.description is not None and len(details.description) > MAX_DESCRIPTION:
        raise ValidationError(f"a description is at most {MAX_DESCRIPTION} characters", field="description")
    if len(details.tags) > MAX_TAGS:
        raise ValidationError(f"at most {MAX_TAGS} tags", field="tags")
    for key, value in details.tags.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ValidationError(
                f"a tag key is 1 to {MAX_TAG_KEY} characters, its value at most {MAX_TAG_VALUE}", field="tags"
            )
    if len(details.commands) > asset.max_commands:
        raise ValidationError(
            f"asset {asset.id!r} runs at most {asset.max_commands} command(s) per job", field="commands"
        )
    own = asset.command_line
    if any(c != own for c in details.commands) and not asset.consumer_commands:
        raise ValidationError(
            f"asset {asset.id!r} runs its own command: {list(own) or 'the image entrypoint'} "
            "(it does not take a consumer's)",
            field="commands",
        )
    size = 0
    for command in details.commands:
        if not command or len(command) > MAX_COMMAND_ARGS:
            raise ValidationError(f"a command is 1 to {MAX_COMMAND_ARGS} arguments", field="commands")
        if any("\x00" in part for part in command):
            raise ValidationError("a command may not contain NUL characters", field="commands")
        size += sum(len(part.encode()) for part in command)
    if size > MAX_COMMAND_BYTES:
        raise ValidationError(f"a job's commands are at most {MAX_COMMAND_BYTES} bytes", field="commands")


class JobService:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        supervisor: Supervisor,
        storage: StorageBackend,
        backend: WorkflowBackend,
        *,
        max_queued_per_consumer: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._storage = storage
        self._backend = backend
        self._bus = bus
        self._supervisor = supervisor
        self._max_queued = max_queued_per_consumer
        self._creating = asyncio.Lock()  # the quota's count and the insert, one create at a time here

    async def create(
        self,
        principal: Principal,
        asset_id: str,
        inputs: Sequence[tuple[str, str]],
        parameters: dict[str, Any] | None,
        details: JobDetails | None = None,
    ) -> Job:
        if principal.is_operator or principal.consumer_id is None:
            raise ValidationError("the operator cannot run jobs; use a consumer token")
        asset = await self._store.assets.get_asset(asset_id) if principal.may_use_asset(asset_id) else None
        if asset is None:
            raise NotFoundError("asset", asset_id)
        refusal = self._backend.refusal(run_needs(asset))
        if refusal is not None:
            # Refused now rather than run without what it needs (a GPU job on a host without one).
            raise ValidationError(f"asset {asset.id!r} cannot run here: {refusal}", field="assetId")
        bindings = await self._check_inputs(principal, asset, inputs)
        values = resolve_parameters(asset, parameters)
        if details is not None:
            check_details(asset, details)
        job = Job.queued(
            job_id=new_id("j"),
            consumer_id=principal.consumer_id,
            grant_id=sorted(principal.grant_ids)[0],
            asset=asset,
            inputs=bindings,
            parameters=values,
            details=details,
        )
        # Count and insert as one step, in this process and across replicas: concurrent createJobs of one
        # consumer cannot overshoot the quota.
        async with self._creating, self._store.replicas.exclusive(f"create-job:{principal.consumer_id}"):
            live = await self._store.jobs.count_jobs(LIVE_STATES, principal.consumer_id)
            if live >= self._max_queued:
                raise QuotaExceededError(f"at most {self._max_queued} unfinished jobs per consumer")
            event = await self._store.jobs.insert_job(job)
        self._metrics.jobs_created.labels(asset.id).inc()
        self._bus.publish(event)
        self._supervisor.wake()
        return job

    async def _check_inputs(
        self, principal: Principal, asset: Asset, inputs: Sequence[tuple[str, str]]
    ) -> tuple[InputBinding, ...]:
        seen: set[str] = set()
        files = await self._store.files.files_by_ids([file_id for _, file_id in inputs])
        bindings = []
        for slot_name, file_id in inputs:
            slot = asset.input_slot(slot_name)
            if slot is None:
                known = ", ".join(s.name for s in asset.inputs) or "none"
                raise ValidationError(
                    f"asset has no input slot {slot_name!r} (slots: {known})", field="inputs"
                )
            if slot_name in seen:
                raise ValidationError(f"input slot {slot_name!r} given twice", field="inputs")
            seen.add(slot_name)
            record = files.get(file_id)
            if record is None or not principal.may_see(record.grant_id) or record.status != FileStatus.READY:
                raise NotFoundError("file", file_id)
            if slot.max_size is not None and record.size > slot.max_size:
                raise ValidationError(
                    f"file for slot {slot_name!r} is {record.size} bytes; "
                    f"the slot takes at most {slot.max_size}",
                    field="inputs",
                )
            if slot.kind == InputSlotKind.ENV:
                await self._check_env_file(slot, record.size, record.storage_key)
            bindings.append(InputBinding(slot=slot_name, file_id=file_id))
        missing = [s.name for s in asset.inputs if s.required and s.name not in seen]
        if missing:
            raise ValidationError(f"required input slots missing: {', '.join(missing)}", field="inputs")
        return tuple(bindings)

    async def _check_env_file(self, slot: InputSlot, size: int, key: str) -> None:
        """An env file is data for the job: only the keys its slot lists, values checked (no NUL, bounded).

        Read here, at most MAX_DOTENV_BYTES of it, so a bad file is refused before a job exists; the
        backends check the staged file again before it reaches a worker.
        """
        if size > MAX_DOTENV_BYTES:
            raise ValidationError(
                f"env file for slot {slot.name!r} is {size} bytes; env files take at most {MAX_DOTENV_BYTES}",
                field="inputs",
            )
        data = bytearray()
        stream = self._storage.get(key)
        try:
            async for chunk in stream:
                data += chunk
                if len(data) > MAX_DOTENV_BYTES:
                    break
        except StorageError as e:
            raise UnavailableError(f"cannot read the env file for slot {slot.name!r}") from e
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        try:
            accepted(parse_dotenv(bytes(data)), slot.keys or ())
        except ValueError as e:
            raise ValidationError(f"env file for slot {slot.name!r}: {e}", field="inputs") from None

    async def get(self, principal: Principal, job_id: str) -> Job:
        job = await self._store.jobs.get_job(job_id)
        if job is None or not principal.may_see(job.grant_id):
            raise NotFoundError("job", job_id)
        return job

    async def list(
        self,
        principal: Principal,
        *,
        state: JobState | None,
        asset_id: str | None,
        first: int,
        after: str | None,
        name_prefix: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Page[Job]:
        try:
            return await self._store.jobs.list_jobs(
                principal.grant_scope,
                state=state,
                asset_id=asset_id,
                first=first,
                after=after,
                name_prefix=name_prefix,
                tags=tags,
            )
        except ValueError:
            raise ValidationError("invalid cursor", field="after") from None

    async def cancel(self, principal: Principal, job_id: str) -> Job:
        """Ask a job to stop. Cancelling a finished job changes nothing and is not an error."""
        job = await self.get(principal, job_id)
        return await self._supervisor.cancel(
            job, reason="CANCELED_BY_USER", message="canceled by the consumer"
        )

    async def delete(self, principal: Principal, job_id: str) -> Job:
        """Forget a finished job with its outputs and log; a live job must be cancelled first."""
        job = await self.get(principal, job_id)
        if not job.state.terminal:
            raise ConflictError(f"job is {job.state}; cancel it and wait for it to end before deleting it")
        await self._supervisor.forget(job)
        return job
