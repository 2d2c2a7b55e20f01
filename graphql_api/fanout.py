"""The subscription fan-out: one event, many subscribers, each result made once and written once.

An event reaches every subscriber as the same domain object; :func:`shared_event` turns it into one
:class:`~graphql_api.types.JobEvent` object for all of them, and :class:`SharedEventExecutor` (the
schema's executor) executes a subscription's selection on it once per distinct selection, not once per
subscriber: subscribers sending the same document (and the same values for the variables inside the
selection) share one result. Only :class:`~graphql_api.types.JobEvent` payloads are shared: their fields
are plain data, the same whoever asks.

Over ``graphql-transport-ws``, the view's handler puts a :data:`DIRECT_NEXT` sender (made by
:func:`next_sender`) in the operation's context: each shared event result is then serialised once (per
event and selection) and that text goes straight to every subscriber's socket as its ``next`` message,
skipping the per-message path (result stream, extension hooks, JSON encoding per subscriber). Anything
else (an error, a result with errors, a payload that is not a JobEvent) takes the ordinary path, and so
does the end of the stream (``complete``) and every error raised by it, in order, since both run in the
operation's task.

When the server's websocket protocol offers a synchronous send (:mod:`graphql_api.wsprotocol`, scope
extension :data:`~graphql_api.wsprotocol.SEND_TEXT_NOW`), the handler also puts a :data:`DIRECT_NEXT_NOW`
sender (:func:`next_sender_now`) there, and ``jobEvents`` gives the stream (``core.live.streams``) a
``deliver`` callback (:data:`DELIVER_NOW`): the bus's fan-out then writes each live event's shared text to
the socket itself, in one loop over the subscribers, without waking their tasks; whatever it cannot write
at once takes the path above.

This leans on Strawberry's executor and websocket handler internals; the pin in ``pyproject.toml`` and
``tests/graphql_api/test_fanout_internals.py`` guard them.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from functools import partial
from typing import Any

from graphql import ExecutionResult, FieldNode, Node, OperationDefinitionNode, VariableNode, visit
from graphql.language import Visitor
from graphql.pyutils import is_awaitable
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation

from core import models as M
from graphql_api.context import Context
from graphql_api.types import JobEvent

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
DELIVER_NOW: ContextVar[DeliverNow | None] = ContextVar("wml_deliver_now", default=None)

_events: OrderedDict[int, tuple[M.JobEvent, JobEvent]] = OrderedDict()


def shared_event(e: M.JobEvent) -> JobEvent:
    """The one JobEvent of this domain event object (the bus hands the same one to every subscriber)."""
    seen = _events.get(id(e))
    if seen is not None and seen[0] is e:
        return seen[1]
    event = JobEvent.from_domain(e)
    _events[id(e)] = (e, event)  # the domain event is kept too: its id stays unique
    if len(_events) > SHARED_EVENTS:
        _events.popitem(last=False)
    return event


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
            DELIVER_NOW.set(partial(self._deliver_now, send_now, self._variables_key()))
        return self._sent_directly(stream, send)

    def _deliver_now(self, send_now: SendNextNow, variables: Hashable, event: M.JobEvent) -> bool:
        """Write ``event``'s shared text for this selection now (False: not possible without the task)."""
        payload = shared_event(event)
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


def next_sender(operation: Operation[Context, None], socket: WebSocket) -> SendNext:
    """Sends a serialised ``next`` payload as this operation's message (nothing once it completed)."""
    prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'

    async def send_next(payload: str) -> None:
        if operation.completed:
            return
        try:
            await socket.send_text(prefix + payload + "}")
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc

    return send_next


def next_sender_now(
    operation: Operation[Context, None], socket: WebSocket, send_text_now: Callable[[str], bool]
) -> SendNextNow:
    """Writes a serialised ``next`` payload as this operation's message at once; False when it cannot
    now (the operation completed, the socket is closing or its buffer is full)."""
    prefix = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'

    def send_next_now(payload: str) -> bool:
        if operation.completed or socket.application_state is not WebSocketState.CONNECTED:
            return False
        return send_text_now(prefix + payload + "}")

    return send_next_now
