"""The app factory: builds backends from settings, opens the core services in the lifespan, mounts routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from backends.storage.registry import create_storage
from backends.workflow.registry import create_workflow_backend
from core.auth import bearer_token
from core.services import Services, open_services
from core.settings import Settings
from core.states import JobState
from core.waiting import bounded
from graphql_api.routes import graphql_middleware, graphql_routes
from provisioner.callbacks import ProvisionerTasks
from provisioner.routes import provision_routes
from wml.requestid import RequestIdMiddleware

log = structlog.get_logger("wml.app")


async def build_services(settings: Settings) -> Services:
    await asyncio.to_thread(settings.secure_data_dir)
    storage = create_storage(settings.resolved_storage_url(), credentials=settings.storage_credentials())
    backend = create_workflow_backend(
        settings.workflow, storage=storage, work_dir=settings.jobs_dir(), settings=settings
    )
    try:
        return await open_services(settings, storage, backend)
    except BaseException:
        await storage.close()
        raise


def create_app(settings: Settings) -> Starlette:
    """The whole service as one ASGI app. Routes are added once the services exist (in the lifespan)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        provisioner = ProvisionerTasks(services.provisioning, settings, services.metrics)
        app.state.provisioner = provisioner
        # Added on start-up because they need the services; the app serves nothing before that anyway.
        app.router.routes.extend([*graphql_routes(services), *provision_routes(services, provisioner.wake)])
        await provisioner.start()
        log.info(
            "serving",
            url=settings.resolved_public_url(),
            workflow=services.backend.name,
            database=settings.resolved_database_url().split(":", 1)[0],
        )
        try:
            yield
        finally:
            await bounded("provisioner", provisioner.stop)
            await services.close()

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        services: Services | None = getattr(request.app.state, "services", None)
        if services is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            async with services.store.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics(request: Request) -> Response:
        """Prometheus metrics, for the operator only: scrape with ``Authorization: Bearer`` and the
        operator token (WML_ADMIN_TOKEN). The chart's Ingress does not route /metrics at all."""
        services: Services | None = getattr(request.app.state, "services", None)
        if services is None:
            return PlainTextResponse("starting\n", status_code=503)
        token = bearer_token(request.headers.get("authorization"))
        caller = await services.auth.authenticate(token)
        if caller is None or not caller.is_operator:
            log.info("request refused", path="/metrics", status=401, reason="operator token required")
            return PlainTextResponse(
                "the operator token is required (Authorization: Bearer <WML_ADMIN_TOKEN>)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        m = services.metrics
        counts = await services.store.jobs.count_by_state()
        for state in JobState:
            m.jobs.labels(state.value).set(counts.get(state.value, 0))
        m.subscriptions.set(services.bus.subscriber_count)
        return Response(m.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)],
        lifespan=lifespan,
        middleware=[Middleware(RequestIdMiddleware), *graphql_middleware(settings)],
    )
