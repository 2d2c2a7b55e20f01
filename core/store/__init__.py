"""The store: every database read and write of the service, one repository per aggregate.

:class:`Store` is the one object callers hold; it owns the engine and gives each aggregate's repository:
``store.jobs`` (jobs and their transitions, :mod:`core.store.jobs`), ``store.events`` (the job event log,
:mod:`core.store.events`), ``store.files`` (:mod:`core.store.files`), ``store.grants`` (consumers and
grants, :mod:`core.store.grants`), ``store.assets`` (:mod:`core.store.assets`) and ``store.replicas``
(serving processes, their leases and the service-wide locks, :mod:`core.store.replicas`). An operation that
writes two aggregates at once (a transition records its event and the job's new files) belongs to the
repository of its primary row and runs in one transaction there. The engine and migrations are in
:mod:`core.store.engine`, the tables in :mod:`core.store.tables`, the row <-> record mapping in
:mod:`core.store.rows`.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from core.store.assets import AssetRepository
from core.store.events import EventRepository
from core.store.files import FileRepository
from core.store.grants import GrantRepository
from core.store.jobs import EVENTS_CHANNEL, LIVE_STATES, Change, JobRepository
from core.store.replicas import ReplicaRepository
from core.store.rows import encode_cursor

# Callers import these from here; they are defined in the store's other modules.
__all__ = ["EVENTS_CHANNEL", "LIVE_STATES", "Change", "Store", "encode_cursor"]


class Store:
    """The repositories of one database, sharing its engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.jobs = JobRepository(engine)
        self.events = EventRepository(engine)
        self.files = FileRepository(engine)
        self.grants = GrantRepository(engine)
        self.assets = AssetRepository(engine)
        self.replicas = ReplicaRepository(engine)
        self.is_postgresql = engine.dialect.name == "postgresql"
