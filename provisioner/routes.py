"""``POST /provision`` (provision and deprovision, all three dialects) and ``GET /provision/details/{id}``.

The three dialects share this route: EDC's control-plane ``provision-http`` (milestone-8 without a
``type``, 0.11 to 0.15 with one) and, from EDC 0.14 (the only one from 0.16), the data plane's
``ProvisionHttp``, whose requests name no asset: the asset's data address gives it in its ``baseUrl``
(``.../provision?asset=<id>``). They are told apart by the body's shape (``core.provisioning``).

Provisioning is closed until configured: without ``WML_PROVISION_SECRET`` and ``WML_EDC_CALLBACK_ORIGINS``
every ``POST /provision`` answers 503 naming them, so an anonymous caller can never make a grant. With
them, the secret is required (constant-time compare) before the body is read, the body is read up to
:data:`MAX_BODY` only, and a ``callbackAddress`` outside the connector's origins is refused with 400
before anything is stored or sent (see :mod:`core.origins`).

Every reply is quick: the work that can wait (the callback) is released only after the reply went out.
Duplicates answer 200 like the first request; only an unknown asset gets a 4xx, which the connector
treats as fatal, as it should.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

import structlog
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core import errors as domain
from core.origins import checked_base
from core.provisioning import ProvisionRequest
from core.services import Services
from provisioner.wire import details_body

log = structlog.get_logger("wml.provisioner")
MAX_BODY = 64 * 1024  # a provision request is a few KiB of JSON


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def provision_routes(services: Services, wake_sender: Callable[[], None]) -> list[Route]:
    settings = services.settings
    provisioning = services.provisioning

    origins = settings.edc.origins()
    secret = settings.edc.provision_secret
    closed = None
    if secret is None:
        closed = "provisioning is off: set WML_PROVISION_SECRET (the connector sends it with each request)"
    elif not origins:
        closed = "provisioning is off: set WML_EDC_CALLBACK_ORIGINS to the connector's management API origin"

    def _secret_ok(request: Request) -> bool:
        assert secret is not None
        given = request.query_params.get("secret") or request.headers.get("x-provision-secret") or ""
        return hmac.compare_digest(given.encode(), secret.get_secret_value().encode())

    async def provision(request: Request) -> Response:
        if closed is not None:
            log.warning("provision request refused", reason=closed)
            return _error(503, "PROVISIONING_DISABLED", closed)
        if not _secret_ok(request):
            log.warning("provision request refused", reason="missing or wrong provisioning secret")
            return _error(401, "UNAUTHENTICATED", "missing or wrong provisioning secret")
        raw = await read_capped(request, MAX_BODY)
        if raw is None:
            return _error(413, "PAYLOAD_TOO_LARGE", f"a provision request is at most {MAX_BODY} bytes")
        try:
            body = json.loads(raw)
            parsed = ProvisionRequest.parse(body, asset=request.query_params.get("asset"))
            if parsed.kind != "deprovision" and checked_base(parsed.callback_address, origins) is None:
                raise domain.ValidationError(
                    "callbackAddress is not under an origin in WML_EDC_CALLBACK_ORIGINS (or is not a plain "
                    "http(s) URL)",
                    field="callbackAddress",
                )
            grant = await provisioning.handle(parsed)
        except json.JSONDecodeError:
            return _error(400, "VALIDATION", "the request body is not JSON")
        except domain.NotFoundError as e:
            return _error(404, e.code, e.message)
        except domain.ValidationError as e:
            return _error(400, e.code, e.message)
        services.metrics.provision_requests.labels(parsed.kind or "untyped").inc()
        log.info(
            "provision request",
            kind=parsed.kind or "untyped",
            transfer_process_id=parsed.transfer_process_id,
            asset_id=parsed.asset_id,
        )
        if grant is None:
            return JSONResponse({}, status_code=200)

        async def release() -> None:
            await provisioning.release_callback(grant.id)
            wake_sender()

        return JSONResponse({}, status_code=200, background=BackgroundTask(release))

    async def details(request: Request) -> Response:
        try:
            found = await provisioning.details(
                request.path_params["transfer_id"], request.headers.get("x-api-key")
            )
        except domain.PermissionDeniedError as e:  # unknown transfers too: both answer alike
            return _error(401, e.code, e.message)
        return JSONResponse(
            details_body(found.grant, settings.resolved_public_url(), found.token),
            headers={"Cache-Control": "no-store"},
        )

    return [
        Route("/provision", provision, methods=["POST"]),
        Route("/provision/", provision, methods=["POST"]),
        Route("/provision/details/{transfer_id:path}", details, methods=["GET"]),
    ]


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is longer than ``limit`` (nothing more is read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
