"""Request ids: every HTTP request and websocket gets one, bound to the log context and echoed back.

A caller's ``X-Request-ID`` is kept when it is a short token of safe characters (so it cannot forge
log lines); otherwise a new one is made.
"""

from __future__ import annotations

import re
import secrets

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
_SAFE = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(HEADER, b"")
        request_id = given.decode() if _SAFE.match(given) else secrets.token_hex(8)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, request_id.encode())]
            await send(message)

        # A websocket's messages carry no headers to add: its ``send`` is passed on as it is (every
        # message sent to thousands of subscribers would go through one more coroutine otherwise).
        # Bound and reset by hand rather than with ``bound_contextvars``, whose generator-based context
        # manager would stay alive, per open websocket, as long as the connection.
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
