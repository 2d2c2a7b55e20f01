"""GraphQL object types, built from core's domain records (never from tables)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, NewType

import strawberry
from graphql import GraphQLError
from strawberry.scalars import JSON

from core import assets as A
from core import models as M
from core.states import JobState as DomainJobState
from core.store import encode_cursor
from graphql_api.context import Context

Long = NewType("Long", int)

LONG_SCALAR = strawberry.scalar(
    name="Long",
    description="A 64-bit integer (sizes, sequence numbers).",
    serialize=int,
    parse_value=lambda v: _parse_long(v),
)


def _parse_long(value: object) -> int:
    # GraphQLError, not ValueError: a bad literal is the client's mistake and must not be masked.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise GraphQLError("Long must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise GraphQLError("Long must be an integer") from None
    if not -(2**63) <= number < 2**63:
        raise GraphQLError("Long out of 64-bit range")
    return number


JobState = strawberry.enum(DomainJobState, name="JobState")


@strawberry.enum
class FileOrigin(enum.Enum):
    UPLOAD = "UPLOAD"
    JOB_OUTPUT = "JOB_OUTPUT"
    JOB_LOG = "JOB_LOG"


@strawberry.enum
class InputKind(enum.Enum):
    FILE = "file"
    ARCHIVE = "archive"
    ENV = "env"


@strawberry.type
class Parameter:
    name: str
    type: str
    description: str
    default: JSON | None
    min: float | None
    max: float | None
    choices: list[JSON] | None
    required: bool


@strawberry.type
class InputSlot:
    name: str
    description: str
    kind: InputKind
    path: str
    required: bool
    max_size: Long | None
    # Where the worker sees the input when the asset places it (absolute); null: under its inputs directory.
    worker_path: str | None = None


@strawberry.type
class OutputSlot:
    name: str
    description: str
    path: str
    required: bool


@strawberry.type
class Resources:
    cpu: float
    memory: Long
    gpu: int
    gpu_type: str | None


@strawberry.type
class Timeouts:
    queue: int
    start: int
    run: int


@strawberry.type
class Asset:
    id: strawberry.ID
    version: str
    name: str
    description: str
    image: str
    parameters: list[Parameter]
    inputs: list[InputSlot]
    outputs: list[OutputSlot]
    resources: Resources
    timeouts: Timeouts
    # Where the worker writes its outputs when the asset says (absolute); null: its outputs directory.
    output_directory: str | None

    @classmethod
    def from_domain(cls, a: A.Asset) -> Asset:
        return cls(
            id=strawberry.ID(a.id),
            version=a.version,
            name=a.name,
            description=a.description,
            image=a.image,
            parameters=[
                Parameter(
                    name=p.name,
                    type=p.type.value,
                    description=p.description,
                    default=JSON(p.default),
                    min=p.min,
                    max=p.max,
                    choices=[JSON(c) for c in p.choices] if p.choices else None,
                    required=p.required,
                )
                for p in a.parameters
            ],
            inputs=[
                InputSlot(
                    name=s.name,
                    description=s.description,
                    kind=InputKind(s.kind.value),
                    path=s.target,
                    required=s.required,
                    max_size=Long(s.max_size) if s.max_size is not None else None,
                    worker_path=s.worker_path,
                )
                for s in a.inputs
            ],
            outputs=[
                OutputSlot(name=o.name, description=o.description, path=o.path, required=o.required)
                for o in a.outputs
            ],
            resources=Resources(
                cpu=a.resources.cpu,
                memory=Long(a.resources.memory),
                gpu=a.resources.gpu,
                gpu_type=a.resources.gpu_type,
            ),
            timeouts=Timeouts(queue=a.timeouts.queue, start=a.timeouts.start, run=a.timeouts.run),
            output_directory=a.output_directory,
        )


@strawberry.type
class Consumer:
    id: strawberry.ID
    name: str
    created_at: datetime


@strawberry.type
class File:
    id: strawberry.ID
    name: str
    size: Long
    sha256: str | None
    content_type: str
    origin: FileOrigin
    created_at: datetime
    expires_at: datetime | None
    record: strawberry.Private[M.FileRecord]

    @classmethod
    def from_domain(cls, f: M.FileRecord) -> File:
        return cls(
            id=strawberry.ID(f.id),
            name=f.name,
            size=Long(f.size),
            sha256=f.sha256,
            content_type=f.content_type,
            origin=FileOrigin(f.origin.value),
            created_at=f.created_at,
            expires_at=f.expires_at,
            record=f,
        )

    @strawberry.field(description="A short-lived URL that serves the content (HTTP Range supported).")
    async def download_url(self, info: strawberry.Info[Context, None]) -> str:
        return await info.context.services.files.download_url(self.record)

    @strawberry.field
    async def job(
        self, info: strawberry.Info[Context, None]
    ) -> Annotated[Job, strawberry.lazy("graphql_api.types")] | None:
        if self.record.job_id is None:
            return None
        job = await info.context.job_loader.load(self.record.job_id)
        return Job.from_domain(job) if job else None


@strawberry.type
class JobInput:
    slot: str
    file_id: strawberry.ID
    record: strawberry.Private[M.InputBinding]
    grant_id: strawberry.Private[str]

    @strawberry.field(description="The bound file, while it still exists.")
    async def file(self, info: strawberry.Info[Context, None]) -> File | None:
        record = await info.context.file_loader.load(self.record.file_id)
        if record is None or record.grant_id != self.grant_id:
            return None
        return File.from_domain(record)


@strawberry.type(description="A label on a job: a key and its value (GA4GH TES tags are these).")
class Tag:
    key: str
    value: str


@strawberry.type
class Job:
    id: strawberry.ID
    asset_id: strawberry.ID
    consumer_id: strawberry.ID = strawberry.field(
        description="Whose job it is (the operator's `jobs` lists every consumer's)."
    )
    state: JobState  # type: ignore[valid-type]
    reason: str | None
    message: str | None
    exit_code: int | None
    parameters: JSON
    log_tail: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    name: str | None = strawberry.field(description="The name the consumer gave the job, if any.")
    description: str | None = strawberry.field(description="What the consumer said the job is for.")
    tags: list[Tag] = strawberry.field(description="The consumer's labels on the job, by key.")
    commands: list[list[str]] = strawberry.field(
        description="The job's own commands, run in order, where its asset allows them; empty: the asset's."
    )
    record: strawberry.Private[M.Job]

    @classmethod
    def from_domain(cls, j: M.Job) -> Job:
        return cls(
            id=strawberry.ID(j.id),
            asset_id=strawberry.ID(j.asset_id),
            consumer_id=strawberry.ID(j.consumer_id),
            state=j.state,
            reason=j.reason,
            message=j.message,
            exit_code=j.exit_code,
            parameters=JSON(j.parameters),
            log_tail=j.log_tail,
            created_at=j.created_at,
            updated_at=j.updated_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
            name=j.details.name,
            description=j.details.description,
            tags=[Tag(key=k, value=v) for k, v in sorted(j.details.tags.items())],
            commands=[list(c) for c in j.details.commands],
            record=j,
        )

    @strawberry.field(description="The asset version this job ran, frozen when it was created.")
    def asset(self) -> Asset:
        return Asset.from_domain(self.record.asset)

    @strawberry.field
    def inputs(self) -> list[JobInput]:
        return [
            JobInput(slot=b.slot, file_id=strawberry.ID(b.file_id), record=b, grant_id=self.record.grant_id)
            for b in self.record.inputs
        ]

    @strawberry.field(description="Files the job produced (available once it has ended).")
    async def outputs(self, info: strawberry.Info[Context, None]) -> list[File]:
        records = await info.context.job_files_loader.load(self.record.id)
        return [File.from_domain(r) for r in records if r.origin == M.FileOrigin.JOB_OUTPUT]

    @strawberry.field(description="The worker's full log, saved when the job ended.")
    async def log(self, info: strawberry.Info[Context, None]) -> File | None:
        records = await info.context.job_files_loader.load(self.record.id)
        return next((File.from_domain(r) for r in records if r.origin == M.FileOrigin.JOB_LOG), None)


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class JobEdge:
    cursor: str
    node: Job


@strawberry.type
class JobConnection:
    edges: list[JobEdge]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[Job]:
        return [e.node for e in self.edges]


@strawberry.type
class FileEdge:
    cursor: str
    node: File


@strawberry.type
class FileConnection:
    edges: list[FileEdge]
    page_info: PageInfo

    @strawberry.field
    def nodes(self) -> list[File]:
        return [e.node for e in self.edges]


@strawberry.type(
    description="A URL to PUT a large file's bytes to (storage directly, when it offers presigned URLs); "
    "then call completeUpload(fileId) to verify them and make the file usable."
)
class UploadTicket:
    file_id: strawberry.ID
    upload_url: str
    method: str
    expires_at: datetime


@strawberry.type
class DeletedFile:
    id: strawberry.ID


@strawberry.type
class DeletedJob:
    id: strawberry.ID


@strawberry.type(description="One state change of a job; `seq` orders all events of the service.")
class JobEvent:
    seq: Long
    job_id: strawberry.ID
    state: JobState  # type: ignore[valid-type]
    reason: str | None
    message: str | None
    exit_code: int | None
    created_at: datetime

    @classmethod
    def from_domain(cls, e: M.JobEvent) -> JobEvent:
        return cls(
            seq=Long(e.seq),
            job_id=strawberry.ID(e.job_id),
            state=e.state,
            reason=e.reason,
            message=e.message,
            exit_code=e.exit_code,
            created_at=e.created_at,
        )


def cursor_of(created_at: datetime, ident: str) -> str:
    return encode_cursor(created_at, ident)
