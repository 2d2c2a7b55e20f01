"""Choose a workflow backend by URL scheme (``WML_WORKFLOW``), importing only the one asked for.

Each implementation is named in :data:`BACKENDS` as ``"module:Class"`` and must offer a
``from_url(url, *, storage, work_dir) -> instance`` class method; nothing is imported until a URL asks
for it, so optional dependencies (kubernetes_asyncio for ``kubernetes``) are needed only where used.
A backend whose ``from_url`` also takes ``settings`` gets the service's settings object (the
``kubernetes`` backend reads its ``WML_K8S_*`` values from it); backends never read the environment.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from backends.loading import load_backend_class
from backends.storage.base import StorageBackend
from backends.workflow.base import WorkflowBackend

BACKENDS: dict[str, str] = {
    "local": "backends.workflow.host.local.backend:LocalWorkflowBackend",
    "kubernetes": "backends.workflow.kubernetes.backend:KubernetesWorkflowBackend",
    "container": "backends.workflow.host.container.backend:ContainerWorkflowBackend",
}


class WorkflowConfigurationError(ValueError):
    """The workflow URL names no known backend, or one that cannot be loaded in this build."""


def create_workflow_backend(
    url: str, *, storage: StorageBackend, work_dir: Path, settings: object | None = None
) -> WorkflowBackend:
    """Build the backend for ``url`` (``local://``, ``kubernetes://namespace``, ``container://podman``).

    ``storage`` is where the side-car stages files from and to; ``work_dir`` holds backend state on this
    machine (the local backend's job directories).
    """
    scheme = urlsplit(url.strip()).scheme.lower() if "://" in url else ""
    known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
    if not scheme:
        raise WorkflowConfigurationError(f"the workflow URL {url!r} has no scheme; known schemes: {known}")
    target = BACKENDS.get(scheme)
    if target is None:
        raise WorkflowConfigurationError(f"unknown workflow scheme {scheme!r}; known schemes: {known}")
    backend_class = load_backend_class("workflow", scheme, target, WorkflowConfigurationError)
    extra = {}
    if settings is not None and "settings" in inspect.signature(backend_class.from_url).parameters:
        extra["settings"] = settings
    try:
        backend = backend_class.from_url(url.strip(), storage=storage, work_dir=work_dir, **extra)
    except ValueError as e:
        raise WorkflowConfigurationError(f"invalid {scheme} workflow URL: {e}") from e
    return cast(WorkflowBackend, backend)
