"""Per-request context: the services, the caller, and DataLoaders so list fields never do N+1 queries."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from graphql import GraphQLError
from strawberry.dataloader import DataLoader

from core.auth import Principal
from core.models import FileRecord, Job
from core.services import Services


class ClientError(GraphQLError):
    """A top-level error meant for the client (not masked), with a stable code in ``extensions``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, extensions={"code": code})


@dataclass
class Context:
    services: Services
    principal: Principal | None
    request: Any = None
    response: Any = None
    # Websockets only: the connection_init payload, and whether the token was revoked since.
    connection_params: dict[str, Any] | None = None
    revoked: bool = False

    # The DataLoaders are made on first use: most websocket connections only hold subscriptions,
    # whose resolvers never load by id, and each of thousands of them would keep three loaders.
    @cached_property
    def file_loader(self) -> DataLoader[str, FileRecord | None]:
        store = self.services.store

        async def files(ids: list[str]) -> list[FileRecord | None]:
            found = await store.files.files_by_ids(ids)
            return [found.get(i) for i in ids]

        return DataLoader(load_fn=files)

    @cached_property
    def job_loader(self) -> DataLoader[str, Job | None]:
        store = self.services.store

        async def jobs(ids: list[str]) -> list[Job | None]:
            found = await store.jobs.jobs_by_ids(ids)
            return [found.get(i) for i in ids]

        return DataLoader(load_fn=jobs)

    @cached_property
    def job_files_loader(self) -> DataLoader[str, list[FileRecord]]:
        store = self.services.store

        async def job_files(job_ids: list[str]) -> list[list[FileRecord]]:
            records = await store.files.files_of_jobs(job_ids)
            return [[r for r in records if r.job_id == j] for j in job_ids]

        return DataLoader(load_fn=job_files)

    @property
    def caller(self) -> Principal:
        """The authenticated caller of a field guarded by :mod:`graphql_api.permissions`."""
        if self.principal is None:  # a programming error: the field lacks its permission class
            raise RuntimeError("a field reads the caller without permission_classes=AUTHENTICATED")
        return self.principal
