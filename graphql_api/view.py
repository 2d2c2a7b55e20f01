"""The Strawberry ASGI view: authenticates each request and builds its context.

HTTP requests carry their token in a header. Websockets (``graphql-transport-ws`` and the legacy
``graphql-ws``) authenticate once, at ``connection_init``: the token comes from its payload
(``{"authorization": "Bearer ..."}`` or ``{"access-token": "..."}``) or else from the handshake's
headers, and a missing or bad one, or one already holding ``WML_MAX_CONNECTIONS_PER_TOKEN`` connections,
closes the connection with 4403 in both protocols, the close reason saying which. The principal then
serves every operation of the connection until the token's grant is revoked.

A ``graphql-transport-ws`` operation's shared event results are sent as pre-serialised text, and written
by the event bus's fan-out itself where the server's websocket protocol allows: the handler only sets up
the senders of :mod:`graphql_api.fanout`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.file_uploads.utils import replace_placeholders_with_files
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage as TransportInitMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types.unset import UNSET, UnsetType

from core.auth import Principal, bearer_token
from core.services import Services
from graphql_api import multipart
from graphql_api.context import Context
from graphql_api.fanout import DIRECT_NEXT, DIRECT_NEXT_NOW, next_sender, next_sender_now
from graphql_api.graphiql import assets_dir, graphiql_enabled, offline_page
from graphql_api.schema import build_schema
from graphql_api.wsprotocol import SEND_TEXT_NOW

log = structlog.get_logger("wml.api")
# The code in ``extensions`` of a request refused before it reached the schema, by HTTP status.
HTTP_ERROR_CODES = {401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
WS_CLEANUP = "wml.ws_cleanup"  # scope key: what to undo when a websocket connection ends
PRINCIPAL = "wml.principal"  # scope key: the caller of an upload, authenticated before its body
SPOOLED = "wml.spooled_uploads"  # scope key: spooled file parts to close once the answer is sent
REJECTED: dict[str, object] = {"message": "invalid, expired or revoked token", "code": "UNAUTHENTICATED"}
TOO_MANY: dict[str, object] = {
    "message": "too many open connections for this token (WML_MAX_CONNECTIONS_PER_TOKEN)",
    "code": "TOO_MANY_CONNECTIONS",
}


class LegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy ``graphql-ws`` protocol, refusing a bad token with close code 4403 (Strawberry's
    default is 1011) so both protocols refuse alike; the ``connection_error`` message still comes first."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is None or isinstance(payload, dict):
            self.context.connection_params = payload
            try:
                await self.view.on_ws_connect(self.context)
            except ConnectionRejectionError as e:
                await self.send_message({"type": "connection_error", "payload": e.payload})
                await self.websocket.close(code=4403, reason=_close_reason(e))
                return
        await super().handle_connection_init(message)


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """``graphql-transport-ws``, with shared event results sent as text made once for all subscribers,
    and a refusal (4403) that says why in its close reason (Strawberry's says "Forbidden" whatever the
    cause: a bad token and too many connections must be told apart)."""

    async def handle_connection_init(self, message: TransportInitMessage) -> None:
        payload = message.get("payload", {})
        if isinstance(payload, dict) and not self.connection_init_received and not self.connection_timed_out:
            # As Strawberry's own, run first: once the principal is set its on_ws_connect call is a no-op.
            self.context.connection_params = payload
            try:
                await self.view.on_ws_connect(self.context)
            except ConnectionRejectionError as e:
                if self.connection_init_timeout_task:
                    self.connection_init_timeout_task.cancel()
                await self.websocket.close(code=4403, reason=_close_reason(e))
                return
        await super().handle_connection_init(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        socket = getattr(self.websocket, "ws", None)
        if isinstance(socket, WebSocket):
            # The operation runs in its own task: the sender is seen by this operation only.
            DIRECT_NEXT.set(next_sender(operation, socket))
            send_text_now = socket.scope.get("extensions", {}).get(SEND_TEXT_NOW)
            if send_text_now is not None:
                DIRECT_NEXT_NOW.set(next_sender_now(operation, socket, send_text_now))
        await super().run_operation(operation)


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, services: Services) -> None:
        settings = services.settings
        ide = graphiql_enabled(settings)
        super().__init__(
            build_schema(
                max_depth=settings.max_query_depth,
                max_tokens=settings.max_query_tokens,
                introspection=settings.introspection,
            ),
            multipart_uploads_enabled=True,
            graphql_ide="graphiql" if ide else None,
        )
        self.services = services
        directory = assets_dir(settings)
        self._ide_page = offline_page(self.graphql_ide_html, directory) if ide and directory else ""
        self._max_connections = settings.max_connections_per_token
        self._connections: dict[str, int] = {}  # token hash -> open websocket connections

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(self._ide_page)

    graphql_ws_handler_class = LegacyWSHandler
    graphql_transport_ws_handler_class = TransportWSHandler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            cleanup: list[Callable[[], object]] = []
            scope[WS_CLEANUP] = cleanup
            try:
                await super().__call__(scope, receive, send)
            finally:
                for undo in cleanup:
                    undo()
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        try:
            if request.method == "POST" and request.headers.get("content-type", "").startswith("multipart/"):
                # An upload is authenticated before a byte of it is read: an anonymous or bad token
                # must not get the server to spool a file.
                principal = await self._principal(request.headers)
                if principal is None:
                    raise HTTPException(401, "authentication required: send 'Authorization: Bearer <token>'")
                scope[PRINCIPAL] = principal
            response = await self.run(request)
        except HTTPException as e:
            code = HTTP_ERROR_CODES.get(e.status_code, "BAD_REQUEST")
            response = JSONResponse(
                {"errors": [{"message": e.reason, "extensions": {"code": code}}]}, status_code=e.status_code
            )
        try:
            await response(scope, receive, send)
        finally:
            # Spooled file parts (of requests with several files) live until the answer is sent.
            for upload in request.scope.get(SPOOLED, ()):
                await upload.close()

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        """Operations with their file placeholders replaced; the last file is streamed, not spooled."""
        starlette_request = getattr(request, "_request", None)
        if not isinstance(starlette_request, Request):  # not Starlette's adapter: Strawberry's own parsing
            return await super().parse_multipart(request)
        try:
            fields, files = await multipart.parse(
                starlette_request.stream(), starlette_request.headers.get("content-type", "")
            )
        except multipart.MultipartError as e:
            raise HTTPException(400, str(e)) from e
        starlette_request.scope[SPOOLED] = [f for f in files.values() if isinstance(f, UploadFile)]
        # Strawberry only expects a map whose paths exist; any other shape of map crashed with a 500.
        try:
            operations = self.parse_json(fields.get("operations", "{}"))
            files_map = self.parse_json(fields.get("map", "{}"))
            # A plain field mapped onto a variable arrives as its text (the resolver refuses it).
            return replace_placeholders_with_files(operations, files_map, {**fields, **files})
        except KeyError as e:
            raise HTTPException(400, "File(s) missing in form data") from e
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise HTTPException(400, "the multipart map does not fit the operations") from e

    async def _principal(self, headers: Any) -> Principal | None:
        token = bearer_token(headers.get("authorization"), headers.get("access-token"))
        if token is None:
            return None
        principal = await self.services.auth.authenticate(token)
        if principal is None:
            raise HTTPException(401, "invalid, expired or revoked token")
        return principal

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        if isinstance(request, WebSocket):
            return Context(services=self.services, principal=None, request=request, response=response)
        principal = request.scope.get(PRINCIPAL) or await self._principal(request.headers)
        return Context(services=self.services, principal=principal, request=request, response=response)

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a websocket at ``connection_init``; refuse (4403) a missing or bad token."""
        if context.principal is not None:
            return UNSET  # type: ignore[no-any-return]  # the legacy handler authenticated it already
        headers = context.request.headers
        token = _token_from_params(context.connection_params) or bearer_token(
            headers.get("authorization"), headers.get("access-token")
        )
        principal = await self.services.auth.authenticate_connection(token)
        if principal is None or token is None:
            raise ConnectionRejectionError(REJECTED)
        key = self.services.auth.connection_key(token)
        if self._connections.get(key, 0) >= self._max_connections:
            log.info("websocket refused", reason="TOO_MANY_CONNECTIONS", consumer_id=principal.consumer_id)
            raise ConnectionRejectionError(TOO_MANY)
        self._connections[key] = self._connections.get(key, 0) + 1
        context.request.scope.get(WS_CLEANUP, []).append(lambda: self._release(key))
        context.principal = principal
        if not principal.is_operator:

            def revoke() -> None:
                context.revoked = True

            unregister = self.services.bus.on_revocation(principal.grant_ids, revoke)
            context.request.scope.get(WS_CLEANUP, []).append(unregister)
        return UNSET  # type: ignore[no-any-return]

    def _release(self, key: str) -> None:
        left = self._connections.get(key, 0) - 1
        if left > 0:
            self._connections[key] = left
        else:
            self._connections.pop(key, None)


def _close_reason(e: ConnectionRejectionError) -> str:
    """The refusal's message as a close reason (at most 123 bytes by the websocket protocol)."""
    message = e.payload.get("message") if isinstance(e.payload, dict) else None
    return str(message or "Forbidden").encode()[:123].decode(errors="ignore")


def _token_from_params(params: dict[str, Any] | None) -> str | None:
    """The token in a ``connection_init`` payload, whatever the case of its keys."""
    if not params:
        return None
    lowered = {str(k).lower(): v for k, v in params.items()}
    authorization, access_token = lowered.get("authorization"), lowered.get("access-token")
    return bearer_token(
        authorization if isinstance(authorization, str) else None,
        access_token if isinstance(access_token, str) else None,
    )


__all__ = ["GraphQLView"]
