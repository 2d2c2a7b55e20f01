"""What the Kubernetes backend knows about its runs, fed by the Pod watch, reconcile, cancel and cleanup.

It keeps the last Pod seen per run, the last phase reported, and the terminal update once a run ended; it
turns every observation into updates through the table in :mod:`backends.workflow.kubernetes.status` and
reports each phase change once (INITIALIZING, then RUNNING, then one terminal update). Finishing a run
(saving the worker log, reading the output manifest: :mod:`backends.workflow.kubernetes.outcome`) runs
in a task of its own, shared by whoever asks first (the watch or reconcile), so it happens once per process.

A run that was cleaned up (its Job deleted) is *forgotten*: later events, and reconcile answers built from
lists taken before the cleanup, never start finishing it again (its Pod and its log are gone by then).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from backends.storage.base import StorageBackend
from backends.workflow.base import BackendUpdate, RunPhase
from backends.workflow.kubernetes.api import KubeApi
from backends.workflow.kubernetes.outcome import finish
from backends.workflow.kubernetes.status import PodVerdict, classify_gone, classify_pod

log = structlog.get_logger("wml.workflow.kubernetes")

_FORGOTTEN = 4096  # cleaned-up refs remembered, so late events about them are ignored
_JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def split_ref(ref: str) -> tuple[str, str] | None:
    """``namespace/name`` -> (namespace, name); None for anything else."""
    namespace, _, name = ref.partition("/")
    if not namespace or not name or "/" in name:
        return None
    return namespace, name


def ref_of(obj: Mapping[str, Any], kind: str = "Pod") -> str | None:
    """The run a Job, Secret or Pod (list items carry no kind) belongs to: ``namespace/<job name>``."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    if kind in ("Job", "Secret"):
        name = meta.get("name")
    else:
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Job"), None)
        labels = meta.get("labels") or {}
        name = owner["name"] if owner else next((labels[k] for k in _JOB_NAME_LABELS if k in labels), None)
    return f"{namespace}/{name}" if namespace and name else None


class RunTracker:
    def __init__(self, api: Callable[[], KubeApi], storage: StorageBackend, tail_lines: int) -> None:
        self._api = api
        self._storage = storage
        self._tail_lines = tail_lines
        self.queue: asyncio.Queue[BackendUpdate] = asyncio.Queue()
        self.pods: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, RunPhase] = {}
        self.final: dict[str, BackendUpdate] = {}
        self.finishing: dict[str, asyncio.Task[BackendUpdate]] = {}
        self.canceled: set[str] = set()
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        self._change = asyncio.Event()  # set (and replaced) whenever anything above changes

    # -- observations ----------------------------------------------------------------------------------

    async def on_event(self, kind: str, pod: dict[str, Any]) -> None:
        ref = ref_of(pod)
        if ref is None:
            return
        if ref in self._forgotten:
            return
        if kind == "DELETED":
            current = self.pods.get(ref)
            if current is None or _uid(current) == _uid(pod):
                self.pods.pop(ref, None)
                await self.gone(ref, pod)
        else:
            self.pods[ref] = pod
            self.observe(ref, pod)
        self._changed()

    async def on_list(self, items: list[dict[str, Any]]) -> None:
        """A fresh list: every Pod in it is observed, and tracked Pods missing from it are gone."""
        listed: dict[str, dict[str, Any]] = {}
        for pod in items:
            ref = ref_of(pod)
            if ref is not None and ref not in self._forgotten:  # a cleaned-up run's Pod, still going
                listed[ref] = pod
        for ref, pod in listed.items():
            self.pods[ref] = pod
            self.observe(ref, pod)
        for ref in [r for r in self.pods if r not in listed]:
            await self.gone(ref, self.pods.pop(ref))
        self._changed()

    def observe(self, ref: str, pod: dict[str, Any]) -> PodVerdict | None:
        """Report what ``pod`` says about a run that is still going; the verdict, or None when ended."""
        if self.ended(ref):
            return None
        verdict = classify_pod(pod)
        if verdict.terminal:
            self.start_finishing(ref, verdict, pod)
        else:
            self.report_phase(ref, verdict.phase)
        return verdict

    async def gone(self, ref: str, last: dict[str, Any] | None) -> None:
        """The run's Pod disappeared (or never came): ask its Job why."""
        if self.ended(ref):
            return
        split = split_ref(ref)
        if split is None:
            return
        job = await self._api().get("Job", split[0], split[1])
        verdict = classify_gone(job, last)
        if verdict.terminal:
            self.start_finishing(ref, verdict, last)

    # -- reports ---------------------------------------------------------------------------------------

    def report_phase(self, ref: str, phase: RunPhase) -> None:
        """INITIALIZING once, then RUNNING once; never backwards."""
        before = self.phases.get(ref)
        if before == phase or before == RunPhase.RUNNING:
            return
        self.phases[ref] = phase
        self.emit(BackendUpdate(ref, phase))
        self._changed()

    def report_final(self, update: BackendUpdate) -> None:
        self.final[update.ref] = update
        self.emit(update)
        self._changed()

    def emit(self, update: BackendUpdate) -> None:
        self.queue.put_nowait(update)

    def start_finishing(
        self, ref: str, verdict: PodVerdict, pod: dict[str, Any] | None
    ) -> asyncio.Task[BackendUpdate]:
        task = self.finishing.get(ref)
        if task is not None:
            return task
        if verdict.worker_started:
            self.report_phase(ref, RunPhase.RUNNING)  # the worker ran, even if no event showed it running
        task = asyncio.create_task(self._finish(ref, verdict, pod), name=f"kubernetes-finish-{ref}")
        self.finishing[ref] = task
        return task

    async def _finish(self, ref: str, verdict: PodVerdict, pod: dict[str, Any] | None) -> BackendUpdate:
        try:
            update = await finish(self._api(), self._storage, ref, verdict, pod, self._tail_lines)
        except Exception as e:  # a run never ends without a terminal update
            log.exception("kubernetes_finish_failed", ref=ref)
            update = BackendUpdate(
                ref, verdict.phase, verdict.reason, f"{verdict.message or ''} ({e})".strip()
            )
        if ref not in self.canceled and ref not in self._forgotten:
            self.report_final(update)
            log.info("kubernetes_job_finished", ref=ref, phase=update.phase, reason=update.reason)
        self._changed()
        return update

    # -- bookkeeping -----------------------------------------------------------------------------------

    def known(self, ref: str) -> bool:
        return ref in self.pods or ref in self.phases or self.ended(ref)

    def ended(self, ref: str) -> bool:
        return ref in self.final or ref in self.finishing or ref in self.canceled or ref in self._forgotten

    def remember(self, ref: str) -> None:
        """A run submitted (again): forget that it was cleaned up before."""
        self._forgotten.pop(ref, None)

    def forgotten(self, ref: str) -> bool:
        """Whether the run was cleaned up (or swept) by this process and not submitted again since."""
        return ref in self._forgotten

    def forget(self, ref: str) -> None:
        for table in (self.pods, self.phases, self.final):
            table.pop(ref, None)
        self.canceled.discard(ref)
        task = self.finishing.pop(ref, None)
        if task is not None and not task.done():
            task.cancel()
        self._forgotten[ref] = None
        while len(self._forgotten) > _FORGOTTEN:
            self._forgotten.popitem(last=False)

    async def close(self) -> None:
        tasks = list(self.finishing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, re-checked after every change."""
        while not predicate():
            await self._change.wait()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return None if uid is None else str(uid)
