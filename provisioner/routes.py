"""``POST /provision`` (provision and deprovision, both dialects) and ``GET /provision/details/{id}``.

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
from core.provisioning import ProvisionRequest
from core.services import Services
from provisioner.wire import details_body

log = structlog.get_logger("wml.provisioner")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def provision_routes(services: Services, wake_sender: Callable[[], None]) -> list[Route]:
    settings = services.settings
    provisioning = services.provisioning

    def _secret_ok(request: Request) -> bool:
        if settings.edc.provision_secret is None:
            return True
        given = request.query_params.get("secret") or request.headers.get("x-provision-secret") or ""
        return hmac.compare_digest(given.encode(), settings.edc.provision_secret.get_secret_value().encode())

    async def provision(request: Request) -> Response:
        if not _secret_ok(request):
            return _error(401, "UNAUTHENTICATED", "missing or wrong provisioning secret")
        try:
            body = json.loads(await request.body())
            parsed = ProvisionRequest.parse(body)
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
        except domain.PermissionDeniedError as e:
            return _error(401, e.code, e.message)
        except domain.NotFoundError as e:
            return _error(404, e.code, e.message)
        return JSONResponse(
            details_body(found.grant, settings.resolved_public_url(), found.token),
            headers={"Cache-Control": "no-store"},
        )

    return [
        Route("/provision", provision, methods=["POST"]),
        Route("/provision/", provision, methods=["POST"]),
        Route("/provision/details/{transfer_id:path}", details, methods=["GET"]),
    ]
