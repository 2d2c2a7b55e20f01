"""Everything this transport serves, as Starlette routes and middleware for the app factory."""

from __future__ import annotations

import json

import structlog
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.services import Services
from core.settings import Settings
from graphql_api.graphiql import graphiql_routes
from graphql_api.http import file_routes
from graphql_api.tes import tes_routes
from graphql_api.view import GraphQLView

log = structlog.get_logger("wml.api")
# Room for the multipart envelope (operations, map, part headers) around the file itself.
MULTIPART_OVERHEAD = 1024 * 1024


def graphql_routes(services: Services) -> list[BaseRoute]:
    view = GraphQLView(services)
    return [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        *file_routes(services),
        *tes_routes(services),
        *graphiql_routes(services.settings),
    ]


class UploadSizeGuard:
    """Refuse a multipart GraphQL request that announces more than the upload limit, before it is read.

    The storage backend enforces each consumer's exact limit while streaming; this guard only keeps an
    oversized body from being spooled to disk first. A multipart request must say its length.
    """

    def __init__(self, app: ASGIApp, max_upload: int) -> None:
        self.app = app
        self.limit = max_upload + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/graphql" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            if headers.get(b"content-type", b"").startswith(b"multipart/"):
                length = headers.get(b"content-length")
                status, message = 0, ""
                if length is None or not length.isdigit():
                    status, message = 411, "a multipart upload must send Content-Length"
                elif int(length) > self.limit:
                    status, message = (
                        413,
                        f"upload larger than the limit of {self.limit - MULTIPART_OVERHEAD} bytes",
                    )
                if status:
                    await _reject(send, status, message)
                    return
        await self.app(scope, receive, send)


class BodyTooLargeError(Exception):
    """Raised from ``receive`` when a body crosses its limit; :class:`BodyLimit` answers 413."""


class BodyLimit:
    """Bound a JSON GraphQL request body before anything reads it whole (authentication included).

    An announced length over the limit is answered 413 at once; a body without one (chunked) is counted
    as the application reads it, and the read that crosses the limit raises instead of returning, so at
    most one chunk past the limit is ever held. Multipart uploads are :class:`UploadSizeGuard`'s.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/graphql":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await _reject(send, 413, self._message)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLargeError
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLargeError:
            log.info("request refused", status=413, reason="body over WML_MAX_REQUEST_BODY")
            if not started:
                await _reject(send, 413, self._message)

    @property
    def _message(self) -> str:
        return f"request body larger than the limit of {self.limit} bytes (WML_MAX_REQUEST_BODY)"


async def _reject(send: Send, status: int, message: str) -> None:
    body = json.dumps(
        {"errors": [{"message": message, "extensions": {"code": "PAYLOAD_TOO_LARGE"}}]}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def graphql_middleware(settings: Settings) -> list[Middleware]:
    return [
        Middleware(BodyLimit, limit=settings.max_request_body),
        Middleware(UploadSizeGuard, max_upload=settings.max_upload_size),
    ]
