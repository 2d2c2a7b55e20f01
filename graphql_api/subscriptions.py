"""GraphQL subscriptions: a job's events (replayed from ``since``, then live) and its log lines.

The rules (scope, replay without gap or duplicate, revocation, slow subscribers) live in
``core.live.streams``; this module only turns its records into GraphQL types and its errors into GraphQL
errors with a stable ``extensions.code``. Over websockets, the caller is the one authenticated at
``connection_init`` (see ``graphql_api.view``).

Every event of ``jobEvents`` goes through :mod:`graphql_api.fanout`, which shares its result among the
subscribers with the same selection.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry
from strawberry.types.unset import UNSET

from core import errors as domain
from graphql_api.context import ClientError, Context
from graphql_api.fanout import DELIVER_NOW, shared_event
from graphql_api.permissions import AUTHENTICATED
from graphql_api.types import JobEvent, Long

Info = strawberry.Info[Context, None]


@strawberry.type(description="One line of a job's log; `seq` counts the lines of this stream from 1.")
class LogLine:
    seq: Long
    text: str


@strawberry.type
class Subscription:
    @strawberry.subscription(
        permission_classes=AUTHENTICATED,
        description="A job's events until its terminal one (from its first event, or after `since`); "
        "without `jobId`, every event of the caller's jobs after `since` (default: from now on). "
        "Reconnect with the last `seq` received as `since` to miss nothing.",
    )
    async def job_events(
        self, info: Info, job_id: strawberry.ID | None = UNSET, since: Long | None = UNSET
    ) -> AsyncGenerator[JobEvent, None]:
        principal = info.context.caller
        stream = info.context.services.streams.events(
            principal,
            str(job_id) if job_id else None,
            since if isinstance(since, int) else None,
            deliver=DELIVER_NOW.get(),
        )
        try:
            async for event in stream:
                yield shared_event(event)
        except domain.DomainError as e:
            raise ClientError(e.message, e.code) from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @strawberry.subscription(
        permission_classes=AUTHENTICATED,
        description="A job's log lines so far, then (with `follow`) new lines while it runs; ends with "
        "the job.",
    )
    async def job_logs(
        self, info: Info, job_id: strawberry.ID, follow: bool = True
    ) -> AsyncGenerator[LogLine, None]:
        principal = info.context.caller
        stream = info.context.services.streams.logs(principal, str(job_id), follow=follow)
        seq = 0
        try:
            async for line in stream:
                seq += 1
                yield LogLine(seq=Long(seq), text=line)
        except domain.DomainError as e:
            raise ClientError(e.message, e.code) from e
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
