"""The GraphQL schema: queries and mutations (names fixed by DESIGN.md), and its safety limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import strawberry
import structlog
from graphql import GraphQLError
from strawberry.extensions import AddValidationRules, DisableIntrospection, MaskErrors, MaxTokensLimiter
from strawberry.extensions.max_aliases import create_validator as max_aliases_rule
from strawberry.extensions.query_depth_limiter import create_validator as max_depth_rule
from strawberry.file_uploads import Upload
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from core import errors as domain
from core.models import JobDetails
from core.states import JobState as DomainJobState
from graphql_api.admin import AdminMutation, AdminQuery
from graphql_api.context import ClientError, Context
from graphql_api.documents import CachedDocuments, DocumentCache
from graphql_api.errors import (
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    UnavailableError,
    ValidationError,
    domain_errors_as_payload,
)
from graphql_api.fanout import SharedEventExecutor
from graphql_api.multipart import MultipartError
from graphql_api.observability import OperationMetrics
from graphql_api.permissions import AUTHENTICATED
from graphql_api.subscriptions import Subscription
from graphql_api.types import (
    LONG_SCALAR,
    Asset,
    Consumer,
    DeletedFile,
    DeletedJob,
    File,
    FileConnection,
    FileEdge,
    Job,
    JobConnection,
    JobEdge,
    JobState,
    Long,
    PageInfo,
    UploadTicket,
    cursor_of,
)

log = structlog.get_logger("wml.graphql")
Info = strawberry.Info[Context, None]
MAX_PAGE = 100
UPLOAD_CHUNK = 1024 * 1024

UploadFilePayload = Annotated[
    File | ValidationError | QuotaExceededError | UnavailableError, strawberry.union("UploadFilePayload")
]
CreateUploadPayload = Annotated[
    UploadTicket | ValidationError | QuotaExceededError | UnavailableError,
    strawberry.union("CreateUploadPayload"),
]
CompleteUploadPayload = Annotated[
    File | NotFoundError | ValidationError | ConflictError | QuotaExceededError | UnavailableError,
    strawberry.union("CompleteUploadPayload"),
]
DeleteFilePayload = Annotated[
    DeletedFile | NotFoundError | ConflictError, strawberry.union("DeleteFilePayload")
]
CreateJobPayload = Annotated[
    Job | NotFoundError | ValidationError | QuotaExceededError, strawberry.union("CreateJobPayload")
]
CancelJobPayload = Annotated[Job | NotFoundError, strawberry.union("CancelJobPayload")]
DeleteJobPayload = Annotated[DeletedJob | NotFoundError | ConflictError, strawberry.union("DeleteJobPayload")]


@strawberry.input
class JobInputBinding:
    slot: str
    file_id: strawberry.ID


@strawberry.input(description="A label: in createJob a job's tag; in jobs a filter (an empty value: any).")
class TagInput:
    key: str
    value: str = ""


@strawberry.input
class CreateJobInput:
    asset_id: strawberry.ID
    inputs: list[JobInputBinding] = strawberry.field(default_factory=list)
    parameters: JSON | None = None
    name: str | None = None
    description: str | None = None
    tags: list[TagInput] = strawberry.field(default_factory=list)
    commands: list[list[str]] = strawberry.field(
        default_factory=list,
        description="Commands of the job's own, run in order in its image, where the asset allows them "
        "(consumerCommands, at most maxCommands); empty: the asset's command.",
    )


@strawberry.input
class CreateUploadInput:
    name: str
    size: Long | None = None
    sha256: str | None = None
    content_type: str | None = None


def _page_size(first: int) -> int:
    if not 1 <= first <= MAX_PAGE:
        raise ClientError(f"first must be between 1 and {MAX_PAGE}", "BAD_USER_INPUT")
    return first


@strawberry.type
class Query(AdminQuery):
    @strawberry.field(
        permission_classes=AUTHENTICATED, description="The calling consumer (null for the operator)."
    )
    async def me(self, info: Info) -> Consumer | None:
        principal = info.context.caller
        if principal.consumer_id is None:
            return None
        consumer = await info.context.services.store.grants.get_consumer(principal.consumer_id)
        if consumer is None:
            return None
        return Consumer(id=strawberry.ID(consumer.id), name=consumer.name, created_at=consumer.created_at)

    @strawberry.field(
        permission_classes=AUTHENTICATED,
        description="The assets the caller's grant covers (the operator: all).",
    )
    async def assets(self, info: Info) -> list[Asset]:
        principal = info.context.caller
        ids = None if principal.is_operator else principal.asset_ids
        return [Asset.from_domain(a) for a in await info.context.services.store.assets.list_assets(ids)]

    @strawberry.field(permission_classes=AUTHENTICATED)
    async def asset(self, info: Info, id: strawberry.ID) -> Asset | None:
        principal = info.context.caller
        if not principal.may_use_asset(str(id)):
            return None
        found = await info.context.services.store.assets.get_asset(str(id))
        return Asset.from_domain(found) if found else None

    @strawberry.field(permission_classes=AUTHENTICATED, description="The caller's jobs, newest first.")
    async def jobs(
        self,
        info: Info,
        first: int = 50,
        after: str | None = None,
        state: JobState | None = None,  # type: ignore[valid-type]
        asset_id: strawberry.ID | None = None,
        name_prefix: str | None = None,
        tags: list[TagInput] | None = None,
    ) -> JobConnection:
        principal = info.context.caller
        page = await _call(
            info.context.services.jobs.list(
                principal,
                state=DomainJobState(state) if state else None,
                asset_id=asset_id,
                first=_page_size(first),
                after=after,
                name_prefix=name_prefix or None,
                tags={t.key: t.value for t in tags or ()},
            )
        )
        edges = [JobEdge(cursor=cursor_of(j.created_at, j.id), node=Job.from_domain(j)) for j in page.items]
        return JobConnection(
            edges=edges, page_info=PageInfo(has_next_page=page.has_next, end_cursor=page.end_cursor)
        )

    @strawberry.field(permission_classes=AUTHENTICATED)
    async def job(self, info: Info, id: strawberry.ID) -> Job | None:
        principal = info.context.caller
        try:
            return Job.from_domain(await info.context.services.jobs.get(principal, str(id)))
        except domain.NotFoundError:
            return None

    @strawberry.field(
        permission_classes=AUTHENTICATED,
        description="The caller's files, newest first (optionally one job's outputs and log).",
    )
    async def files(
        self, info: Info, first: int = 50, after: str | None = None, job_id: strawberry.ID | None = None
    ) -> FileConnection:
        principal = info.context.caller
        page = await _call(
            info.context.services.files.list(
                principal, job_id=str(job_id) if job_id else None, first=_page_size(first), after=after
            )
        )
        edges = [FileEdge(cursor=cursor_of(f.created_at, f.id), node=File.from_domain(f)) for f in page.items]
        return FileConnection(
            edges=edges, page_info=PageInfo(has_next_page=page.has_next, end_cursor=page.end_cursor)
        )

    @strawberry.field(permission_classes=AUTHENTICATED)
    async def file(self, info: Info, id: strawberry.ID) -> File | None:
        principal = info.context.caller
        try:
            return File.from_domain(await info.context.services.files.get(principal, str(id)))
        except domain.NotFoundError:
            return None


async def _call(awaitable: Any) -> Any:
    """Await a service call whose domain errors belong at the top level (list queries)."""
    try:
        return await awaitable
    except domain.DomainError as e:
        raise ClientError(e.message, e.code) from e


async def _chunks(upload: Upload) -> AsyncIterator[bytes]:
    try:
        while chunk := await upload.read(UPLOAD_CHUNK):  # type: ignore[attr-defined]
            yield chunk
    except MultipartError as e:  # a streamed file part cut short or malformed: storage keeps nothing
        raise domain.ValidationError(str(e), field="file") from None


@strawberry.type
class Mutation(AdminMutation):
    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Upload a file (GraphQL multipart request). Large files: createUpload.",
    )
    @domain_errors_as_payload
    async def upload_file(self, info: Info, file: Upload, name: str | None = None) -> UploadFilePayload:
        principal = info.context.caller
        filename = name if name is not None else (getattr(file, "filename", None) or "upload")
        content_type = getattr(file, "content_type", None)
        if not callable(getattr(file, "read", None)):  # a plain form field mapped onto the variable
            raise domain.ValidationError("file must be a file part of the multipart request", field="file")
        record = await info.context.services.files.upload(principal, filename, content_type, _chunks(file))
        return File.from_domain(record)

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Announce a large upload; PUT the bytes to the returned URL, then call completeUpload.",
    )
    @domain_errors_as_payload
    async def create_upload(self, info: Info, input: CreateUploadInput) -> CreateUploadPayload:
        principal = info.context.caller
        record, url, expires = await info.context.services.files.create_upload(
            principal, input.name, input.size, input.sha256, input.content_type
        )
        from datetime import UTC, datetime

        return UploadTicket(
            file_id=strawberry.ID(record.id),
            upload_url=url,
            method="PUT",
            expires_at=datetime.fromtimestamp(expires, UTC),
        )

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Finish a createUpload once its bytes are PUT: checks their size and sha256 and makes "
        "the file usable (a mismatch deletes them and is refused). A completed file is returned as it is.",
    )
    @domain_errors_as_payload
    async def complete_upload(self, info: Info, file_id: strawberry.ID) -> CompleteUploadPayload:
        principal = info.context.caller
        record = await info.context.services.files.complete_upload(principal, str(file_id))
        return File.from_domain(record)

    @strawberry.mutation(permission_classes=AUTHENTICATED)
    @domain_errors_as_payload
    async def delete_file(self, info: Info, id: strawberry.ID) -> DeleteFilePayload:
        principal = info.context.caller
        record = await info.context.services.files.delete(principal, str(id))
        return DeletedFile(id=strawberry.ID(record.id))

    @strawberry.mutation(
        permission_classes=AUTHENTICATED,
        description="Start a job of an asset with input files bound to its slots.",
    )
    @domain_errors_as_payload
    async def create_job(self, info: Info, input: CreateJobInput) -> CreateJobPayload:
        principal = info.context.caller
        params = input.parameters
        if params is not None and not isinstance(params, dict):
            raise domain.ValidationError("parameters must be a JSON object", field="parameters")
        tags = {t.key: t.value for t in input.tags}
        if len(tags) != len(input.tags):
            raise domain.ValidationError("a tag key is given twice", field="tags")
        details = JobDetails(
            name=input.name,
            description=input.description,
            tags=tags,
            commands=tuple(tuple(c) for c in input.commands),
        )
        job = await info.context.services.jobs.create(
            principal, str(input.asset_id), [(b.slot, str(b.file_id)) for b in input.inputs], params, details
        )
        return Job.from_domain(job)

    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Stop a job. Cancelling a finished job changes nothing."
    )
    @domain_errors_as_payload
    async def cancel_job(self, info: Info, id: strawberry.ID) -> CancelJobPayload:
        principal = info.context.caller
        return Job.from_domain(await info.context.services.jobs.cancel(principal, str(id)))

    @strawberry.mutation(
        permission_classes=AUTHENTICATED, description="Delete a finished job with its outputs and log."
    )
    @domain_errors_as_payload
    async def delete_job(self, info: Info, id: strawberry.ID) -> DeleteJobPayload:
        principal = info.context.caller
        job = await info.context.services.jobs.delete(principal, str(id))
        return DeletedJob(id=strawberry.ID(job.id))


class Schema(strawberry.Schema):
    """Strawberry's schema, logging each error once and in proportion.

    Strawberry logs every error of a result at ERROR with its traceback: a client sending a bad argument
    or no token wrote 25 lines, so a minute of fuzzing buried real faults. Here a client's mistake
    (a syntax, validation or deliberate client error) is one INFO line with its code; an unexpected
    error is logged, with its traceback, where it is masked (:func:`_should_mask`).
    """

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            original = error.original_error
            if original is None or isinstance(original, ClientError | GraphQLError):
                code = (error.extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
                log.info("graphql request refused", code=code, error=error.message[:300], path=error.path)


def _should_mask(error: GraphQLError) -> bool:
    original = error.original_error
    if original is None or isinstance(original, ClientError | GraphQLError):
        return False  # syntax/validation errors and deliberate client errors are safe to show
    log.error("unexpected error in resolver", path=error.path, exc_info=original)
    return True


def build_schema(
    *,
    max_depth: int = 10,
    max_tokens: int = 2000,
    max_aliases: int = 30,
    documents: DocumentCache | None = None,
    introspection: bool = True,
) -> strawberry.Schema:
    # The document cache must be this schema's own: its entries passed this schema's rules and limits.
    documents = documents if documents is not None else DocumentCache()
    # The rules of QueryDepthLimiter and MaxAliasesLimiter, made once: those extensions make a new rule
    # class per operation, which a subscription keeps for as long as it lasts (~4.5 KiB each).
    limits = (max_depth_rule(max_depth, None, None), max_aliases_rule(max_aliases))
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map={Long: LONG_SCALAR}),
        execution_context_class=SharedEventExecutor,  # one result per event and selection
        extensions=[
            lambda: CachedDocuments(documents),
            lambda: AddValidationRules(list(limits)),
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            OperationMetrics,
            lambda: MaskErrors(
                should_mask_error=_should_mask, error_message="Internal error; it has been logged."
            ),
            *([] if introspection else [DisableIntrospection]),
        ],
    )
