"""GraphQL subscriptions: a job's events (replayed from ``since``, then live) and its log lines.

The rules (scope, replay without gap or duplicate, revocation, slow subscribers) live in
``core.live.streams``; this module only turns its records into GraphQL types and its errors into GraphQL
errors with a stable ``extensions.code``. Over websockets, the caller is the one authenticated at
``connection_init`` (see ``graphql_api.view``).

Fan-out cost: an event reaches every subscriber as the same :class:`JobEvent` object, and
:class:`SharedEventExecutor` (the schema's executor) executes a subscription's selection on it once per
distinct selection, not once per subscriber: subscribers sending the same document (and the same values
for the variables inside the selection) share one result. Only :class:`JobEvent` payloads are shared:
their fields are plain data, the same whoever asks.

Over ``graphql-transport-ws``, the view's handler also puts a :data:`DIRECT_NEXT` sender in the
operation's context: each shared event result is then serialised once (per event and selection) and
that text goes straight to every subscriber's socket as its ``next`` message, skipping the per-message
path (result stream, extension hooks, JSON encoding per subscriber). Anything else (an error, a result
with errors, a payload that is not a :class:`JobEvent`) takes the ordinary path, and so does the end of
the stream (``complete``) and every error raised by it, in order, since both run in the operation's task.

When the handler also puts a synchronous :data:`DIRECT_NEXT_NOW` sender there, ``jobEvents`` gives the
stream (``core.live.streams``) a ``deliver`` callback: the bus's fan-out then writes each live event's shared
text to the socket itself, in one loop over the subscribers, without waking their tasks; whatever it
cannot write at once takes the path above.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from datetime import datetime
from functools import partial
from typing import Any

import strawberry
from graphql import ExecutionResult, FieldNode, Node, OperationDefinitionNode, VariableNode, visit
from graphql.language import Visitor
from graphql.pyutils import is_awaitable
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.unset import UNSET

from core import errors as domain
from core import models as M
from graphql_api.context import ClientError, Context
from graphql_api.permissions import AUTHENTICATED
from graphql_api.types import JobState, Long

Info = strawberry.Info[Context, None]
SHARED_EVENTS = 1024  # recent events kept as one shared JobEvent object each
SHARED_RESULTS = 1024  # recent (event, selection) results kept for the other subscribers

# Sends the serialised payload of a ``next`` message ({"data": ...}) for the current operation.
SendNext = Callable[[str], Awaitable[None]]
DIRECT_NEXT: ContextVar[SendNext | None] = ContextVar("wml_direct_next", default=None)
# Writes it at once; False when it cannot now (nothing written: send it the ordinary way).
SendNextNow = Callable[[str], bool]
DIRECT_NEXT_NOW: ContextVar[SendNextNow | None] = ContextVar("wml_direct_next_now", default=None)
# Set by the executor for the subscription resolver: delivers a live domain event at once, or declines.
DeliverNow = Callable[[M.JobEvent], bool]
_DELIVER_NOW: ContextVar[DeliverNow | None] = ContextVar("wml_deliver_now", default=None)


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
    def shared(cls, e: M.JobEvent) -> JobEvent:
        """The one JobEvent of this domain event object (the bus hands the same one to every
        subscriber)."""
        seen = _events.get(id(e))
        if seen is not None and seen[0] is e:
            return seen[1]
        event = cls.from_domain(e)
        _events[id(e)] = (e, event)  # the domain event is kept too: its id stays unique
        if len(_events) > SHARED_EVENTS:
            _events.popitem(last=False)
        return event

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


_events: OrderedDict[int, tuple[M.JobEvent, JobEvent]] = OrderedDict()


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor; a :class:`JobEvent` payload's result is shared by the subscribers whose
    operation (same parsed document) and selection variables are the same. Results with errors are not
    shared."""

    _results: OrderedDict[Hashable, tuple[object, object, ExecutionResult]] = OrderedDict()
    _texts: OrderedDict[Hashable, tuple[object, object, str]] = OrderedDict()
    _selection_variables: dict[int, tuple[OperationDefinitionNode, tuple[str, ...]]] = {}

    def execute_operation(self, serially: bool | None = None) -> Any:
        payload = self.root_value
        if not isinstance(payload, JobEvent):
            return super().execute_operation(serially)
        key = (id(payload), id(self.operation), self._variables_key())
        hit = self._results.get(key)
        if hit is not None and hit[0] is payload and hit[1] is self.operation:
            return hit[2]
        result = super().execute_operation(serially)
        if is_awaitable(result):
            return self._keep_later(key, payload, result)
        self._keep(key, payload, result)
        return result

    async def _keep_later(self, key: Hashable, payload: object, result: Any) -> Any:
        done = await result
        self._keep(key, payload, done)
        return done

    def _keep(self, key: Hashable, payload: object, result: Any) -> None:
        if isinstance(result, ExecutionResult) and not result.errors:
            # The payload and operation are kept too, so that their ids stay unique while cached.
            self._results[key] = (payload, self.operation, result)
            if len(self._results) > SHARED_RESULTS:
                self._results.popitem(last=False)

    def cancellable_iterable(self, iterable: AsyncIterable[Any]) -> AsyncIterable[Any]:
        stream = super().cancellable_iterable(iterable)
        send = DIRECT_NEXT.get()
        if send is None:
            return stream
        send_now = DIRECT_NEXT_NOW.get()
        if send_now is not None:  # read by the resolver when it starts, in this task
            _DELIVER_NOW.set(partial(self._deliver_now, send_now, self._variables_key()))
        return self._sent_directly(stream, send)

    def _deliver_now(self, send_now: SendNextNow, variables: Hashable, event: M.JobEvent) -> bool:
        """Write ``event``'s shared text for this selection now (False: not possible without the task)."""
        payload = JobEvent.shared(event)
        text = self._cached_text(payload, variables)
        if text is None:
            result = self.build_per_event_executor(payload).execute_operation(False)
            if is_awaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                return False
            text = self._keep_text(payload, variables, result)
        return text is not None and send_now(text)

    async def _sent_directly(self, stream: AsyncIterable[Any], send: SendNext) -> AsyncGenerator[Any, None]:
        """Send each shared event result's text directly; pass on only what needs the ordinary path."""
        iterator = stream.__aiter__()
        variables = self._variables_key()  # fixed for the whole subscription
        try:
            async for payload in iterator:
                text = await self._shared_text(payload, variables) if isinstance(payload, JobEvent) else None
                if text is None:
                    yield payload
                else:
                    await send(text)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _shared_text(self, payload: JobEvent, variables: Hashable) -> str | None:
        """The ``next`` payload text of this event for this selection (None: the result had errors)."""
        text = self._cached_text(payload, variables)
        if text is not None:
            return text
        result = self.build_per_event_executor(payload).execute_operation(False)
        if is_awaitable(result):
            result = await result
        return self._keep_text(payload, variables, result)

    def _cached_text(self, payload: JobEvent, variables: Hashable) -> str | None:
        hit = self._texts.get((id(payload), id(self.operation), variables))
        if hit is not None and hit[0] is payload and hit[1] is self.operation:
            return hit[2]
        return None

    def _keep_text(self, payload: JobEvent, variables: Hashable, result: Any) -> str | None:
        if not isinstance(result, ExecutionResult) or result.errors:
            return None
        text = json.dumps({"data": result.data}, separators=(",", ":"))
        self._texts[(id(payload), id(self.operation), variables)] = (payload, self.operation, text)
        if len(self._texts) > SHARED_RESULTS:
            self._texts.popitem(last=False)
        return text

    def _variables_key(self) -> tuple[tuple[str, str], ...]:
        """The values of the variables used below the root field (its own arguments only choose the
        stream, not what an event looks like)."""
        known = self._selection_variables.get(id(self.operation))
        if known is None or known[0] is not self.operation:
            known = (self.operation, _selection_variables(self.operation, self.fragment_definitions.values()))
            if len(self._selection_variables) > SHARED_RESULTS:
                self._selection_variables.clear()
            self._selection_variables[id(self.operation)] = known
        coerced = self.variable_values.coerced
        return tuple((name, repr(coerced.get(name))) for name in known[1])


def _selection_variables(operation: OperationDefinitionNode, fragments: Iterable[Node]) -> tuple[str, ...]:
    """The variables an event's result may depend on: all but those only in root field arguments."""
    names: set[str] = set()

    class Collect(Visitor):
        def enter_variable(self, node: VariableNode, *_args: Any) -> None:
            names.add(node.name.value)

    parts: list[Node] = list(fragments)
    for root in operation.selection_set.selections:
        if isinstance(root, FieldNode):
            parts.extend(root.directives or ())
            if root.selection_set is not None:
                parts.append(root.selection_set)
        else:
            parts.append(root)
    for part in parts:
        visit(part, Collect())
    return tuple(sorted(names))


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
            deliver=_DELIVER_NOW.get(),
        )
        try:
            async for event in stream:
                yield JobEvent.shared(event)
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
