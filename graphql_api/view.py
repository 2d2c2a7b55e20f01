"""The Strawberry ASGI view: authenticates each request (HTTP headers) and builds its context."""

from __future__ import annotations

from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from core.auth import Principal, bearer_token
from core.services import Services
from graphql_api.context import Context
from graphql_api.schema import build_schema

# The code in ``extensions`` of a request refused before it reached the schema, by HTTP status.
HTTP_ERROR_CODES = {401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, services: Services) -> None:
        settings = services.settings
        super().__init__(
            build_schema(max_depth=settings.max_query_depth, max_tokens=settings.max_query_tokens),
            multipart_uploads_enabled=True,
            graphql_ide="graphiql",
        )
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        try:
            response = await self.run(request)
        except HTTPException as e:
            code = HTTP_ERROR_CODES.get(e.status_code, "BAD_REQUEST")
            response = JSONResponse(
                {"errors": [{"message": e.reason, "extensions": {"code": code}}]}, status_code=e.status_code
            )
        try:
            await response(scope, receive, send)
        finally:
            # Starlette keeps a parsed multipart form (its spooled upload files) on the request until
            # someone closes it; Strawberry does not, so close it here once the answer is sent.
            form = getattr(request, "_form", None)
            if form is not None:
                await form.close()

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        # Strawberry only expects a map whose paths exist; any other shape of map crashed with a 500.
        try:
            return await super().parse_multipart(request)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
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
        principal = await self._principal(request.headers)
        return Context(services=self.services, principal=principal, request=request, response=response)


__all__ = ["GraphQLView"]
