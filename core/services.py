"""The service container: builds every core service from settings and backends, and runs their life.

The entry point creates the storage and workflow backends (from their registries) and hands them in;
core never chooses an implementation itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog

from backends.storage.base import StorageBackend
from backends.workflow.base import WorkflowBackend
from core.assets import load_catalog
from core.auth import RECENT_TTL, Authenticator
from core.files import FileService
from core.jobs import JobService
from core.live.bus import EventBus, OrderedEventBus
from core.live.streams import JobStreams
from core.metrics import Metrics
from core.provisioning import ProvisioningService
from core.settings import Settings
from core.signing import UrlSigner
from core.store import Store
from core.store.engine import create_engine, migrate
from core.supervisor import Supervisor
from core.waiting import SHUTDOWN_STEP_SECONDS, bounded

log = structlog.get_logger("wml.services")


@dataclass
class Services:
    settings: Settings
    store: Store
    storage: StorageBackend
    backend: WorkflowBackend
    bus: EventBus
    auth: Authenticator
    signer: UrlSigner
    files: FileService
    jobs: JobService
    supervisor: Supervisor
    provisioning: ProvisioningService
    metrics: Metrics
    streams: JobStreams

    async def close(self, step_seconds: float = SHUTDOWN_STEP_SECONDS) -> None:
        """Stop everything, each step bounded (core.waiting.bounded): a step that hangs does not keep the
        others, or the process's exit, waiting."""
        await bounded("supervisor and workflow backend", self.supervisor.stop, step_seconds)
        await bounded("event bus", self.bus.close, step_seconds)
        await bounded("storage", self.storage.close, step_seconds)
        await bounded("database", self.store.engine.dispose, step_seconds)


async def open_store(settings: Settings) -> Store:
    """Migrate the database to the newest schema and sync the asset catalogue into it (the data directory
    made the server's alone first)."""
    await asyncio.to_thread(settings.secure_data_dir)
    url = settings.resolved_database_url()
    assets = load_catalog(settings.catalog_dir)  # fail before touching anything on a bad catalogue
    await migrate(url)
    store = Store(create_engine(url))
    async with store.replicas.exclusive("catalogue"):  # replicas starting together sync it one by one
        await store.assets.sync_assets(assets)
    log.info("catalogue synced", assets=[a.id for a in assets], directory=str(settings.catalog_dir))
    return store


async def open_services(settings: Settings, storage: StorageBackend, backend: WorkflowBackend) -> Services:
    store = await open_store(settings)
    bus = await open_bus(settings, store)
    signer = UrlSigner(settings.resolved_secret_key(), settings.resolved_public_url())
    metrics = Metrics()
    files = FileService(
        store,
        storage,
        signer,
        max_upload=settings.max_upload_size,
        url_ttl=settings.url_ttl,
        pending_ttl=settings.pending_upload_ttl,
        max_stored=settings.max_stored_bytes_per_consumer,
        max_pending=settings.max_pending_uploads_per_consumer,
        metrics=metrics,
    )
    supervisor = Supervisor(
        store,
        backend,
        storage,
        bus,
        capacity=settings.backend_capacity,
        max_running_per_consumer=settings.max_running_jobs_per_consumer,
        cancel_timeout=settings.cancel_timeout,
        tick_interval=settings.tick_interval,
        reconcile_interval=settings.reconcile_interval,
        sweep=files.sweep_expired,
        retention=timedelta(days=settings.retention_days) if settings.retention_days else None,
        replica=settings.resolved_replica_id(),
        lease=settings.replica_lease,
        grace=settings.replica_grace,
        metrics=metrics,
    )
    jobs = JobService(
        store,
        bus,
        supervisor,
        storage,
        backend,
        max_queued_per_consumer=settings.max_queued_jobs_per_consumer,
        metrics=metrics,
    )
    # A remembered connect check never outlives the interval at which open streams recheck their grant.
    auth = Authenticator(
        store, settings.resolved_admin_token(), remember_for=min(RECENT_TTL, settings.stream_recheck_interval)
    )
    bus.on_any_revocation(auth.forget_grant)
    provisioning = ProvisioningService(
        store,
        supervisor,
        files,
        bus,
        settings.resolved_secret_key(),
        default_lifetime=settings.edc.grant_lifetime,
        retention=settings.edc.deprovision_retention,
        retry_max_delay=settings.edc.callback_max_delay,
        unauthorized_delay=settings.edc.callback_unauthorized_delay,
        give_up_after=settings.edc.callback_give_up_after,
    )
    services = Services(
        settings=settings,
        store=store,
        storage=storage,
        backend=backend,
        bus=bus,
        auth=auth,
        signer=signer,
        files=files,
        jobs=jobs,
        supervisor=supervisor,
        provisioning=provisioning,
        metrics=metrics,
        streams=JobStreams(store, bus, backend, storage, recheck_interval=settings.stream_recheck_interval),
    )
    try:
        await supervisor.start()
    except BaseException:
        await bus.close()
        raise
    return services


async def open_bus(settings: Settings, store: Store) -> EventBus:
    """The event bus: PostgreSQL LISTEN/NOTIFY when the database is PostgreSQL (events reach the
    subscribers of every replica), else in-process."""
    bus: EventBus
    if store.is_postgresql:
        from core.live.postgres import PgEventBus  # asyncpg only where it is used

        bus = PgEventBus(store, settings.resolved_database_url(), settings.subscriber_queue_size)
    else:
        bus = OrderedEventBus(store, settings.subscriber_queue_size)
    await bus.start()
    return bus
