"""Jobs driven through core's real Supervisor (Store on SQLite) onto the Kubernetes backend and the fake
cluster, with the test playing the controller (tests/support/kube_cluster.py) and the side-car."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.storage.file import FileStorageBackend
from backends.workflow.kubernetes.backend import KubernetesWorkflowBackend
from core.assets import Asset
from core.live.bus import EventBus
from core.models import Job, new_id
from core.states import JobState
from core.store import Store
from core.store.engine import create_engine, migrate
from core.supervisor import Supervisor
from sidecar.manifest import OutputManifest, StageOutManifest, UploadedObject
from tests.support.kube_backend import FakeKube

ASSET = Asset.model_validate(
    {
        "id": "dummy-job",
        "name": "Dummy",
        "image": "localhost/wml/dummy-job:1",
        "command": ["/bin/sh", "/app/entrypoint.sh"],
        "timeouts": {"queue": 60, "start": 60, "run": 60},
        "outputs": [{"name": "result", "path": "result.txt"}],
    }
)


@dataclass
class Supervised:
    store: Store
    supervisor: Supervisor
    backend: KubernetesWorkflowBackend
    storage: FileStorageBackend
    consumer_id: str

    async def queue(self, asset: Asset = ASSET, parameters: dict[str, Any] | None = None) -> Job:
        job = Job.queued(
            job_id=new_id("j"),
            consumer_id=self.consumer_id,
            grant_id="g_1",
            asset=asset,
            parameters=parameters,
        )
        await self.store.jobs.insert_job(job)
        self.supervisor.wake()
        return job

    async def ref(self, job_id: str, timeout: float = 5.0) -> str:
        """The backend reference of a job, once the supervisor submitted it."""
        async with asyncio.timeout(timeout):
            while True:
                job = await self.store.jobs.get_job(job_id)
                if job is not None and job.backend_ref:
                    return job.backend_ref
                await asyncio.sleep(0.02)

    async def wait(self, job_id: str, state: JobState, timeout: float = 5.0) -> Job:
        job = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    job = await self.store.jobs.get_job(job_id)
                    if job is not None and job.state == state:
                        return job
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"job never reached {state}; it is {job and job.state}") from None

    async def states(self, job_id: str) -> list[JobState]:
        return [event.state for event in await self.store.events.events(job_id)]


@contextlib.asynccontextmanager
async def supervised(
    tmp_path: Path,
    kube: FakeKube,
    *,
    reconcile_interval: float = 3600,
    database_url: str | None = None,
    replica: str = "single",
    lease: float = 30.0,
    **options: Any,
) -> AsyncIterator[Supervised]:
    """A Supervisor on a store (a fresh SQLite one unless ``database_url``) and a new Kubernetes backend,
    as replica ``replica``; stopped on exit."""
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'wml.sqlite'}"
    await migrate(url)
    store = Store(create_engine(url))
    async with store.replicas.exclusive("catalogue"):
        await store.assets.sync_assets([ASSET])
    consumers = await store.grants.list_grants()
    if consumers:
        consumer_id = consumers[0].consumer_id
    else:
        consumer_id = (await store.grants.create_consumer(new_id("c"), "acme")).id
        await store.grants.create_grant("g_1", consumer_id, ASSET.id, "hash", None)
    # Replicas share the jobs' storage, as they would share S3.
    storage = FileStorageBackend(tmp_path / "files")
    backend = kube.backend(storage, **options)
    supervisor = Supervisor(
        store,
        backend,
        storage,
        EventBus(),
        capacity=8,
        max_running_per_consumer=8,
        cancel_timeout=5,
        tick_interval=0.05,
        reconcile_interval=reconcile_interval,
        replica=replica,
        lease=lease,
    )
    await supervisor.start()
    try:
        yield Supervised(store, supervisor, backend, storage, consumer_id)
    finally:
        await supervisor.stop()
        await store.engine.dispose()


async def play_outputs(
    kube: FakeKube, ref: str, storage: FileStorageBackend, files: dict[str, bytes]
) -> OutputManifest:
    """Do what stage-out does for ``files`` (output name -> bytes): upload them to the keys in the job's
    Secret and return the output manifest it would print (outputs not in ``files`` are missing)."""
    namespace, name = ref.split("/")
    secret = kube.api.state.get("secrets", namespace, name)
    assert secret is not None
    plan = StageOutManifest.model_validate_json(base64.b64decode(secret["data"]["stage-out.json"]))
    manifest = OutputManifest()
    for entry in plan.outputs:
        if entry.name not in files:
            manifest.missing.append(entry.name)
            continue
        data = files[entry.name]

        async def chunks(data: bytes = data) -> AsyncIterator[bytes]:
            yield data

        await storage.put(entry.key, chunks())
        digest = hashlib.sha256(data).hexdigest()
        manifest.outputs.append(UploadedObject(name=entry.name, key=entry.key, size=len(data), sha256=digest))
    return manifest
