"""The Kubernetes workflow backend: one ``batch/v1`` Job per job (``WML_WORKFLOW=kubernetes://NAMESPACE``).

- **Objects** (:mod:`~backends.workflow.kubernetes.manifests`): the Job, then a Secret owned by it with the
  side-car manifests, the storage settings and the values of ``env`` inputs (read and checked here at
  submit, since the worker's environment cannot be changed from inside the Pod). Two requests per submit.
- **Status** (:mod:`~backends.workflow.kubernetes.watch`, :mod:`~backends.workflow.kubernetes.status`): one
  label-selected Pod watch for the namespace (with namespace-per-consumer: one for all namespaces),
  list-then-watch, resumed by resourceVersion, re-listed on 410; :meth:`reconcile` lists Jobs, Pods and
  Secrets once for all refs. Nothing polls per job.
- **Finishing** (:mod:`~backends.workflow.kubernetes.outcome`): the worker log is saved to storage through
  ``pods/log`` and the outputs are read from stage-out's output manifest; then one terminal update.
- **Cancel** deletes the Job (background propagation; not found is success) after saving the worker's log
  so far, and reports CANCELED. **Cleanup** comes after the terminal update, so after the log was saved
  (it waits for a finishing still under way), and happens once per process however often it is asked: it
  deletes the Job in the background, and the garbage collector takes the Pod and the Secret (owned by the
  Job) with it; the Secret is deleted by name only when the Job was not there. A run cleaned up is
  unknown to :meth:`reconcile` from then on, even with lists taken before: it is never finished twice,
  nor deleted again by a sweep working from those lists. The **orphan sweep** runs with each
  :meth:`reconcile`: labelled Jobs and Secrets whose ref is not among the live refs passed in (their job
  is terminal or unknown), older than ``orphan_grace`` and not submitted recently by this process, are
  deleted (and, per consumer, namespaces left without Jobs).

Requests per job: submit 2, finish 1 (the worker log; +1 when stage-out's manifest is not in its
termination message), cleanup 1 (+1 with namespace-per-consumer); cancel adds 1 (the log so far) and
takes cleanup's place. Each reconcile pass costs 3 lists whatever the number of jobs.

Size: about 420 lines, the protocol's seven operations and the sweep; everything with a seam of its own
(objects, status table, watch, tracker, outcome, namespaces) is already in its own module beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import structlog

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import BackendUpdate, InputKind, JobRun, RunNeeds, RunPhase, WorkflowBackendError
from backends.workflow.kubernetes.api import KubeApi, KubeConflictError, KubeNotFoundError
from backends.workflow.kubernetes.config import KubernetesOptions, options_from
from backends.workflow.kubernetes.manifests import (
    JOB_LABEL,
    KEEP_UNTIL_ANNOTATION,
    SELECTOR,
    WORKER,
    PresignedUrls,
    job_manifest,
    job_name,
    label_value,
    owner_reference,
    secret_manifest,
)
from backends.workflow.kubernetes.namespaces import ConsumerNamespaces
from backends.workflow.kubernetes.outcome import RunInfo, save_worker_log
from backends.workflow.kubernetes.status import classify_gone, classify_pod, container_statuses, started
from backends.workflow.kubernetes.tracker import RunTracker, ref_of, split_ref
from backends.workflow.kubernetes.watch import PodWatcher
from sidecar.dotenv import MAX_DOTENV_BYTES, accepted, parse_dotenv

log = structlog.get_logger("wml.workflow.kubernetes")

# Seconds a deletion is remembered for sweeps whose lists predate it (far longer than one reconcile pass).
_REMOVED_MEMORY = 600.0
MAX_PRESIGN_TTL = 7 * 24 * 3600  # the longest a v4 signature lives
PRESIGN_MARGIN = 600  # seconds a job's URLs outlive its deadline (the stage-out after a timeout)


class KubernetesWorkflowBackend:
    """Runs jobs as Kubernetes Jobs; see the module docstring."""

    name = "kubernetes"
    shared = True  # every replica reaches the same cluster

    def __init__(self, options: KubernetesOptions, storage: StorageBackend) -> None:
        self.options = options
        self._storage = storage
        self._client: KubeApi | None = None
        self._tracker = RunTracker(self._api, storage, options.log_tail_lines)
        self._namespaces: ConsumerNamespaces | None = None
        self._submitted: dict[str, float] = {}  # ref -> when this process submitted it (monotonic)
        self._deleted: set[str] = set()  # refs whose Job cancel deleted, until their cleanup
        # ref -> when cancel or cleanup last deleted its objects (monotonic; inf while under way): a sweep
        # working from lists taken before then leaves them alone instead of deleting them a second time.
        self._removed: dict[str, float] = {}
        self.watcher: PodWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None

    @classmethod
    def from_url(cls, url: str, *, storage: StorageBackend, work_dir: Path, settings: Any = None) -> Self:
        """``kubernetes://NAMESPACE[?option=value...]``; ``settings`` gives the ``WML_K8S_*`` values."""
        return cls(options_from(url, settings), storage)

    async def start(self) -> None:
        self._client = await KubeApi.connect(self.options)
        if self.options.namespace_per_consumer:
            self._namespaces = ConsumerNamespaces(self._client, self.options)
        if (self.options.storage_url or "").startswith("file:") and self.options.storage_secret is None:
            log.warning("kubernetes_with_file_storage", hint="side-cars in pods cannot reach local files")
        self.watcher = PodWatcher(
            self._client,
            None if self.options.namespace_per_consumer else self.options.namespace,
            SELECTOR,
            on_event=self._tracker.on_event,
            on_list=self._tracker.on_list,
            timeout=self.options.watch_timeout,
        )
        self._watch_task = asyncio.create_task(self.watcher.run(), name="kubernetes-pod-watch")

    async def close(self) -> None:
        """Stop watching; the Jobs keep running and a new instance re-attaches to them."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._tracker.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _api(self) -> KubeApi:
        if self._client is None:
            raise WorkflowBackendError("the kubernetes backend is not started")
        return self._client

    # -- submit ----------------------------------------------------------------------------------------

    def refusal(self, needs: RunNeeds) -> str | None:
        """GPUs are ``nvidia.com/gpu`` limits (the scheduler finds a node) unless the cluster has none
        (``gpus`` off); every path is a volume mount."""
        if (needs.gpu > 0 or needs.gpu_type) and not self.options.gpus:
            return (
                "it asks for a GPU and the Kubernetes backend is configured without GPUs (WML_K8S_GPUS=false)"
            )
        return None

    def reference(self, job_id: str, consumer_id: str) -> str:
        """``NAMESPACE/wml-<job id>``: the namespace is the consumer's with namespace-per-consumer."""
        namespace = self.options.namespace if self._namespaces is None else self._namespaces.name(consumer_id)
        return f"{namespace}/{job_name(job_id)}"

    async def submit(self, run: JobRun) -> str:
        name = job_name(run.job_id)
        if self._namespaces is None:
            return await self._submit_in(run, self.options.namespace, name)
        async with self._namespaces.using(run.consumer_id) as namespace:
            return await self._submit_in(run, namespace, name)

    async def _submit_in(self, run: JobRun, namespace: str, name: str) -> str:
        api, ref = self._api(), f"{namespace}/{name}"
        self._submitted[ref] = time.monotonic()
        self._tracker.remember(ref)
        try:
            dotenv = await read_env_inputs(self._storage, run)
        except ValueError as e:
            self._tracker.report_phase(ref, RunPhase.INITIALIZING)
            message = f"staging the inputs failed: {e}"
            self._tracker.report_final(BackendUpdate(ref, RunPhase.ERROR, "INPUT_STAGING_FAILED", message))
            return ref
        urls = await self._presigned_urls(run)
        manifest = job_manifest(run, name, namespace, self.options, sorted(dotenv), urls is not None)
        try:
            job = await api.create("Job", namespace, manifest)
        except KubeConflictError:
            existing = await api.get("Job", namespace, name)  # submitted before: keep following it
            labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
            if existing is None or labels.get(JOB_LABEL) != label_value(run.job_id):
                raise WorkflowBackendError(f"a Job named {namespace}/{name} exists for another job") from None
            job = existing
        secret = secret_manifest(run, name, namespace, self.options, dotenv, urls)
        secret["metadata"]["ownerReferences"] = [owner_reference(job)]
        try:
            await self._create_secret(namespace, name, secret)
        except WorkflowBackendError:
            await api.delete("Job", namespace, name, propagation="Background")
            raise
        self._tracker.report_phase(ref, RunPhase.INITIALIZING)
        log.info("kubernetes_job_submitted", job_id=run.job_id, ref=ref)
        return ref

    async def _presigned_urls(self, run: JobRun) -> PresignedUrls | None:
        """The job's own storage URLs, living until its deadline (at most the 7 days of a v4 signature), or
        None when the storage offers none (the side-cars then get the storage settings)."""
        ttl = min(MAX_PRESIGN_TTL, run.run_timeout + self.options.deadline_allowance + PRESIGN_MARGIN)
        try:
            if await self._storage.presign_put(run.log_key, ttl) is None:
                return None
            gets = {i.key: await self._storage.presign_get(i.key, ttl) for i in run.inputs}
            puts = {o.key: await self._storage.presign_put(o.key, ttl) for o in run.outputs}
        except StorageError as e:
            raise WorkflowBackendError(f"cannot mint the job's storage URLs: {e}") from e
        if None in gets.values() or None in puts.values():
            return None
        return PresignedUrls(
            {k: v for k, v in gets.items() if v is not None}, {k: v for k, v in puts.items() if v is not None}
        )

    async def _create_secret(self, namespace: str, name: str, secret: dict[str, Any]) -> None:
        api = self._api()
        try:
            await api.create("Secret", namespace, secret)
        except KubeConflictError:  # left by an earlier attempt: replace it
            await api.delete("Secret", namespace, name)
            await api.create("Secret", namespace, secret)

    # -- cancel and cleanup ----------------------------------------------------------------------------

    async def cancel(self, ref: str) -> None:
        split = split_ref(ref)
        tracker = self._tracker
        if split is None or ref in tracker.final or ref in tracker.canceled:
            return
        finishing = tracker.finishing.get(ref)
        if finishing is not None:  # it ended on its own first: that outcome stands
            await asyncio.shield(finishing)
            return
        tracker.canceled.add(ref)
        namespace, name = split
        record, tail = None, None
        pod = tracker.pods.get(ref)
        if pod is not None and started(container_statuses(pod).get(WORKER)):
            log_key = _log_key(pod)
            if log_key is not None:
                record, tail = await save_worker_log(
                    self._api(),
                    self._storage,
                    namespace,
                    pod["metadata"]["name"],
                    log_key,
                    self.options.log_tail_lines,
                )
        try:
            async with self._removing(ref):
                existed = await self._api().delete("Job", namespace, name, propagation="Background")
        except WorkflowBackendError:
            tracker.canceled.discard(ref)  # not stopped: keep following it
            raise
        if existed:
            self._deleted.add(ref)  # its Pod and Secret go with it: cleanup has nothing left to do
        if existed or ref in tracker.phases or ref in self._submitted:
            update = BackendUpdate(
                ref, RunPhase.CANCELED, message="canceled on request", log=record, log_tail=tail
            )
            tracker.report_final(update)
        log.info("kubernetes_job_canceled", ref=ref, existed=existed)

    async def cleanup(self, ref: str) -> None:
        split = split_ref(ref)
        if split is None or self._tracker.forgotten(ref):
            return  # cleaned up (or swept) already: the supervisor may ask more than once
        namespace, name = split
        finishing = self._tracker.finishing.get(ref)
        if finishing is not None:  # the worker log is saved before its Pod goes
            await asyncio.shield(finishing)
        outcome = self._tracker.final.get(ref)
        self._tracker.forget(ref)
        self._submitted.pop(ref, None)
        api = self._api()
        if ref in self._deleted:  # by cancel
            self._deleted.discard(ref)
        elif await self._keep_if_failed(namespace, name, outcome):
            pass
        else:
            async with self._removing(ref):
                if not await api.delete("Job", namespace, name, propagation="Background"):
                    # The garbage collector takes the Secret (and the Pod) with its Job; without one, ours.
                    await api.delete("Secret", namespace, name)
        if self._namespaces is not None:
            await self._namespaces.release_if_empty(namespace)

    async def _keep_if_failed(self, namespace: str, name: str, outcome: BackendUpdate | None) -> bool:
        """With ``keep_failed_for``: leave a failed run's Job (its Pod, log and Secret with it) in the
        cluster for that long, for debugging. It is marked with when it may go (the orphan sweep removes it
        then) and its TTL is set to the same, so the cluster removes it even without us.

        Failed: the run's terminal update here said FAILED or ERROR (the Job controller may not have marked
        the Job yet, and an image that cannot be pulled never fails it); without one (a restarted service),
        the Job's own ``Failed`` condition."""
        keep = self.options.keep_failed_for
        if keep <= 0:
            return False
        if outcome is not None:
            failed = outcome.phase in (RunPhase.FAILED, RunPhase.ERROR)
        else:
            job = await self._api().get("Job", namespace, name)
            conditions = ((job or {}).get("status") or {}).get("conditions") or []
            failed = any(c.get("type") == "Failed" and c.get("status") == "True" for c in conditions)
        if not failed:
            return False
        until = int(time.time()) + keep
        patch = {"metadata": {"annotations": {KEEP_UNTIL_ANNOTATION: str(until)}}}
        try:
            await self._api().patch(
                "Job", namespace, name, {**patch, "spec": {"ttlSecondsAfterFinished": keep}}
            )
        except KubeNotFoundError:
            return False  # gone already: nothing to keep (the Secret is removed as usual)
        log.info("kubernetes_failed_job_kept", job=f"{namespace}/{name}", seconds=keep)
        return True

    @contextlib.asynccontextmanager
    async def _removing(self, ref: str) -> AsyncIterator[None]:
        self._removed[ref] = math.inf
        try:
            yield
        finally:  # a failed delete too: a sweep listing after this deletes what is left
            self._removed[ref] = time.monotonic()

    # -- status ----------------------------------------------------------------------------------------

    async def updates(self) -> AsyncIterator[BackendUpdate]:
        while True:
            yield await self._tracker.queue.get()

    async def reconcile(self, refs: Sequence[str]) -> list[BackendUpdate]:
        """One list of Jobs, Pods and Secrets for all refs; then the orphan sweep."""
        api, scope = self._api(), None if self.options.namespace_per_consumer else self.options.namespace
        listed_at = time.monotonic()
        jobs = {ref_of(j, "Job"): j for j in (await api.select("Job", scope, SELECTOR))[0]}
        pods = {ref_of(p): p for p in (await api.select("Pod", scope, SELECTOR))[0]}
        secrets = (await api.select("Secret", scope, SELECTOR))[0]
        results = await asyncio.gather(*(self._reconcile_one(r, jobs.get(r), pods.get(r)) for r in refs))
        await self._sweep(set(refs), list(jobs.values()), secrets, listed_at)
        return list(results)

    async def _reconcile_one(
        self, ref: str, job: dict[str, Any] | None, pod: dict[str, Any] | None
    ) -> BackendUpdate:
        tracker = self._tracker
        if ref in tracker.final:
            return tracker.final[ref]
        if ref in tracker.finishing:
            return await asyncio.shield(tracker.finishing[ref])
        lost = BackendUpdate(ref, RunPhase.ERROR, "BACKEND_LOST", "the Kubernetes Job is gone")
        # Cleaned up (after the lists were taken, maybe): unknown now, and never finished twice.
        if split_ref(ref) is None or job is None or tracker.forgotten(ref):
            return lost
        if pod is not None:
            tracker.pods[ref] = pod
            verdict = classify_pod(pod)
        else:
            verdict = classify_gone(job, tracker.pods.get(ref))
        if verdict.terminal:
            return await asyncio.shield(tracker.start_finishing(ref, verdict, pod or tracker.pods.get(ref)))
        tracker.report_phase(ref, verdict.phase)
        return BackendUpdate(ref, tracker.phases.get(ref, verdict.phase))

    async def _sweep(
        self, live: set[str], jobs: list[dict[str, Any]], secrets: list[dict[str, Any]], listed_at: float
    ) -> None:
        """Delete labelled objects of runs that are not live, once they are old enough (see module doc).

        Objects that cancel or cleanup deleted after the lists were taken are gone already: not deleted again.
        """
        now, grace = time.monotonic(), self.options.orphan_grace
        recent = {ref for ref, at in self._submitted.items() if now - at < max(grace, 60)}
        self._removed = {ref: at for ref, at in self._removed.items() if at >= now - _REMOVED_MEMORY}
        removed = {ref for ref, at in self._removed.items() if at >= listed_at}
        api, swept = self._api(), set()
        kept = {
            ref_of(j, "Job") for j in jobs if _kept(j)
        }  # failed Jobs kept for debugging, and their Secrets
        for kind, objects in (("Job", jobs), ("Secret", secrets)):
            for obj in objects:
                ref = ref_of(obj, kind)
                if ref is None or ref in live or ref in recent or ref in removed or ref in kept:
                    continue
                if _age(obj) < grace:
                    continue
                namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
                await api.delete(kind, namespace, name, propagation="Background" if kind == "Job" else None)
                swept.add(ref)
        for ref in swept:
            log.info("kubernetes_orphan_swept", ref=ref)
            self._tracker.forget(ref)
            self._submitted.pop(ref, None)
            self._deleted.discard(ref)
        if self._namespaces is not None:
            occupied = {j["metadata"]["namespace"] for j in jobs if ref_of(j, "Job") not in swept}
            listed, _ = await api.select("Namespace", None, SELECTOR)
            for namespace in listed:
                name = namespace["metadata"]["name"]
                if name not in occupied and _age(namespace) >= grace:
                    await self._namespaces.release_if_empty(name)

    # -- logs ------------------------------------------------------------------------------------------

    async def logs(self, ref: str, *, follow: bool) -> AsyncIterator[str]:
        split = split_ref(ref)
        if split is None:
            return
        pod = await self._worker_pod(ref, follow)
        if pod is not None:
            try:
                chunks = self._api().log(split[0], pod["metadata"]["name"], WORKER, follow=follow)
                async for line in _lines(chunks):
                    yield line
                return
            except KubeNotFoundError:
                pass  # the Pod went meanwhile: what was saved is what is left
            except WorkflowBackendError as e:
                log.info("kubernetes_log_unavailable", ref=ref, error=str(e))
                return
        final = self._tracker.final.get(ref)
        if final is not None and final.log is not None:
            async for line in _lines(self._storage.get(final.log.key)):
                yield line

    async def _worker_pod(self, ref: str, follow: bool) -> dict[str, Any] | None:
        """The run's Pod once its worker started (waiting for that when following); None if it never will."""
        tracker = self._tracker

        def ready() -> bool:
            pod = tracker.pods.get(ref)
            return (pod is not None and started(container_statuses(pod).get(WORKER))) or tracker.ended(ref)

        if follow and self.watcher is not None:
            await self.watcher.synced.wait()  # then every live run of ours is known
            if tracker.known(ref) or ref in self._submitted:
                await tracker.wait_for(ready)
        pod = tracker.pods.get(ref)
        return pod if pod is not None and started(container_statuses(pod).get(WORKER)) else None


async def read_env_inputs(storage: StorageBackend, run: JobRun) -> dict[str, str]:
    """The values of the run's ``env`` inputs, checked like stage-in does (syntax, size, and only the keys
    each slot accepts); ValueError says what is wrong. The run's own env is never overridden by a file."""
    values: dict[str, str] = {}
    for staged in (i for i in run.inputs if i.kind == InputKind.ENV):
        if staged.size > MAX_DOTENV_BYTES:
            raise ValueError(f"input {staged.slot!r}: env files are limited to {MAX_DOTENV_BYTES} bytes")
        try:
            data = await _read_bounded(storage, staged.key, staged.size)
        except StorageError as e:
            raise ValueError(f"input {staged.slot!r}: cannot fetch it from storage: {e}") from e
        if len(data) != staged.size or hashlib.sha256(data).hexdigest() != staged.sha256.lower():
            raise ValueError(f"input {staged.slot!r}: size or sha256 does not match; the object is corrupt")
        try:
            values.update(accepted(parse_dotenv(data), staged.keys))
        except ValueError as e:
            raise ValueError(f"input {staged.slot!r}: not a valid dotenv file: {e}") from None
    return {k: v for k, v in values.items() if k not in run.env}


async def _read_bounded(storage: StorageBackend, key: str, size: int) -> bytes:
    """The object at ``key``, read no further than one byte past ``size``."""
    data = bytearray()
    stream = storage.get(key)
    try:
        async for chunk in stream:
            data += chunk
            if len(data) > size:
                break
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    return bytes(data)


def _log_key(pod: dict[str, Any]) -> str | None:
    info = RunInfo.of(pod)
    return None if info is None else info.log_key


def _kept(job: dict[str, Any]) -> bool:
    """A failed Job kept for debugging whose time has not come yet (see ``keep_failed_for``)."""
    until = ((job.get("metadata") or {}).get("annotations") or {}).get(KEEP_UNTIL_ANNOTATION)
    try:
        return until is not None and float(until) > time.time()
    except ValueError:
        return False


def _age(obj: dict[str, Any]) -> float:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - created).total_seconds()


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    pending = b""
    async for chunk in chunks:
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")
