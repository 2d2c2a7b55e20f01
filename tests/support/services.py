"""The core services of a test data directory, without HTTP: for unit tests of the core rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from backends.storage.file import FileStorageBackend
from backends.workflow.host.local.backend import LocalWorkflowBackend
from core.services import Services, open_services
from tests.support.api import kill_leftover_workers, make_settings


@asynccontextmanager
async def running_services(data_dir: Path, **overrides: Any) -> AsyncIterator[Services]:
    """Services on ``make_settings(data_dir, **overrides)``, the local backend and local storage."""
    settings = make_settings(data_dir, **overrides)
    storage = FileStorageBackend(data_dir / "files")
    opened = await open_services(settings, storage, LocalWorkflowBackend(data_dir / "jobs", storage))
    try:
        yield opened
    finally:
        await opened.close()
        kill_leftover_workers(settings.jobs_dir())  # local workers outlive the service on purpose
