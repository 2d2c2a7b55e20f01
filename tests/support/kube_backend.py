"""A whole fake Kubernetes for the backend's tests: the API server on loopback, the controller, and
(optionally) a kubelet that runs the Pods; plus the backend's options pointed at it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backends.storage.base import StorageBackend
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from backends.workflow.kubernetes.config import Connection, KubernetesOptions
from backends.workflow.kubernetes.manifests import SELECTOR
from tests.support.kube_api import FakeKubernetes
from tests.support.kube_cluster import FakeCluster
from tests.support.kube_kubelet import SIDECAR_IMAGE, ProcessKubelet

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {"localhost/wml/dummy-job:1": {"/app": ROOT / "dummy-job"}}
NAMESPACE = "wml-jobs"


@dataclass
class FakeKube:
    api: FakeKubernetes
    cluster: FakeCluster
    kubelet: ProcessKubelet | None
    options: KubernetesOptions

    def backend(self, storage: StorageBackend, **overrides: Any) -> KubernetesWorkflowBackend:
        return KubernetesWorkflowBackend(replace(self.options, **overrides), storage)

    def leftovers(self) -> list[tuple[str, str | None, str]]:
        """Every object still labelled as ours (Jobs, Pods, Secrets, namespaces, ...)."""
        return self.api.state.labelled(SELECTOR)

    def verbs_used(self) -> set[tuple[str, str]]:
        """(resource, RBAC verb) of every request the backend made."""
        verbs = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "WATCH": "watch", "LOG": "get"}
        return {(c.plural, verbs.get(c.method) or ("get" if c.name else "list")) for c in self.api.requests}

    async def nothing_left(self, timeout: float = 5.0) -> None:
        """Wait until no labelled object is left (cleanup follows a terminal state closely)."""
        try:
            async with asyncio.timeout(timeout):
                while self.leftovers():
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"left behind: {self.leftovers()}") from None


@contextlib.asynccontextmanager
async def fake_kube(
    work_dir: Path,
    storage_url: str,
    *,
    run_pods: bool = False,
    images: dict[str, dict[str, Path]] | None = None,
) -> AsyncIterator[FakeKube]:
    """A fake cluster with the jobs namespace; with ``run_pods`` the Pods really run (slower), their images'
    container paths mapped to host directories by ``images`` (default :data:`IMAGES`)."""
    api = FakeKubernetes()
    async with api.serving():
        api.state.create("namespaces", None, {"metadata": {"name": NAMESPACE}})
        cluster = FakeCluster(api)
        kubelet = ProcessKubelet(cluster, work_dir / "kubelet", images or IMAGES) if run_pods else None
        options = KubernetesOptions(
            namespace=NAMESPACE,
            connection=Connection(api_url=api.url),
            sidecar_image=SIDECAR_IMAGE,
            storage_url=storage_url,
            deadline_allowance=0,
            orphan_grace=0,
            retries=3,
            retry_max_delay=0.05,
            request_timeout=5.0,
            watch_timeout=30,
            requests_per_second=1000.0,
            burst=1000,
        )
        try:
            yield FakeKube(api, cluster, kubelet, options)
        finally:
            if kubelet is not None:
                await kubelet.close()
