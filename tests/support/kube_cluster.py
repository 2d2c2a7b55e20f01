"""The test plays the cluster: a Job controller, and status changes of each job's Pod (see kube_api.py).

:class:`FakeCluster` creates a Job's Pod as the Job controller would (name ``<job>-xxxxx``, the template's
labels and annotations, an ownerReference to the Job), and moves it through its phases on request:
named steps (``scheduled``, ``staging``, ``working``, ``uploading``) or any status built with
:func:`status`. When a Pod ends it marks the Job ``Complete`` or ``Failed`` like the controller does.
With a :class:`tests.support.kube_kubelet.ProcessKubelet` attached it also runs every Pod for real.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sidecar.manifest import OutputManifest, output_manifest_line
from tests.support.kube_api import FakeKubernetes
from tests.support.kube_state import Obj

STAGE_IN, WORKER, STAGE_OUT = "stage-in", "worker", "stage-out"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting(reason: str = "PodInitializing", message: str | None = None) -> Obj:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def running() -> Obj:
    return {"running": {"startedAt": _now()}}


def terminated(code: int = 0, reason: str | None = None, message: str | None = None) -> Obj:
    state: Obj = {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error")}
    if message:
        state["message"] = message
    return {"terminated": {**state, "startedAt": _now(), "finishedAt": _now()}}


STEPS: dict[str, tuple[str, Obj, Obj, Obj]] = {  # phase, stage-in, worker, stage-out
    "scheduled": ("Pending", waiting(), waiting(), waiting()),
    "staging": ("Pending", running(), waiting(), waiting()),
    "working": ("Pending", terminated(0), running(), waiting()),
    "uploading": ("Running", terminated(0), terminated(0), running()),
}


def status(
    phase: str,
    stage_in: Obj,
    worker: Obj,
    stage_out: Obj,
    *,
    reason: str | None = None,
    message: str | None = None,
    conditions: list[Obj] | None = None,
    images: dict[str, str] | None = None,
) -> Obj:
    images = images or {}

    def entry(name: str, state: Obj) -> Obj:
        return {
            "name": name,
            "state": state,
            "image": images.get(name, "?"),
            "ready": False,
            "restartCount": 0,
        }

    result: Obj = {
        "phase": phase,
        "initContainerStatuses": [entry(STAGE_IN, stage_in), entry(WORKER, worker)],
        "containerStatuses": [entry(STAGE_OUT, stage_out)],
        "conditions": conditions or [],
    }
    if reason:
        result["reason"] = reason
    if message:
        result["message"] = message
    return result


class FakeCluster:
    def __init__(self, api: FakeKubernetes) -> None:
        self.api = api
        self.state = api.state
        self.pods: dict[str, str] = {}  # "namespace/job" -> its Pod's name
        self.autostart: bool = True  # create a Pod for each new Job
        self.on_pod: list[Any] = []  # callbacks(namespace, pod name) when a Pod is created
        self.on_pod_deleted: list[Any] = []
        self._created = asyncio.Event()
        self.state.listeners.append(self._changed)

    def _changed(self, kind: str, plural: str, obj: Obj) -> None:
        if plural == "jobs" and kind == "ADDED" and self.autostart:
            asyncio.get_running_loop().call_soon(self.create_pod, obj)
        if plural == "pods" and kind == "DELETED":
            for callback in self.on_pod_deleted:
                callback(obj["metadata"]["namespace"], obj["metadata"]["name"])

    def create_pod(self, job: Obj) -> str:
        meta, template = job["metadata"], job["spec"]["template"]
        ref = f"{meta['namespace']}/{meta['name']}"
        if self.state.get("jobs", meta["namespace"], meta["name"]) is None:
            return ""
        labels = {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": meta["name"]}
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }
        pod = self.state.create(
            "pods",
            meta["namespace"],
            {
                "metadata": {
                    "generateName": f"{meta['name']}-",
                    "labels": labels,
                    "annotations": template["metadata"].get("annotations", {}),
                    "ownerReferences": [owner],
                },
                "spec": template["spec"],
                "status": status("Pending", *STEPS["scheduled"][1:]),
            },
        )
        name = str(pod["metadata"]["name"])
        self.pods[ref] = name
        self.state.patch(
            "jobs", meta["namespace"], meta["name"], {"status": {"active": 1, "startTime": _now()}}
        )
        self._created.set()
        for callback in self.on_pod:
            callback(meta["namespace"], name)
        return name

    async def pod_of(self, ref: str, timeout: float = 5.0) -> str:
        """The name of the Pod of ``ref``'s Job, once the controller created it."""
        async with asyncio.timeout(timeout):
            while ref not in self.pods:
                self._created.clear()
                await self._created.wait()
        return self.pods[ref]

    # -- moving a Pod along ----------------------------------------------------------------------------

    async def step(self, ref: str, name: str) -> None:
        phase, stage_in, worker, stage_out = STEPS[name]
        await self.set_status(ref, status(phase, stage_in, worker, stage_out))

    async def set_status(self, ref: str, new: Obj) -> None:
        namespace, job = ref.split("/")
        pod_name = await self.pod_of(ref)
        pod = self.state.get("pods", namespace, pod_name)
        if pod is None:
            return
        images = {c["name"]: c["image"] for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]}
        for entry in [*new.get("initContainerStatuses", []), *new.get("containerStatuses", [])]:
            entry["image"] = images.get(entry["name"], "?")
            if "terminated" in entry["state"]:
                self.state.close_log(namespace, pod_name, entry["name"])
        # One merge patch that replaces the whole status (keys it had and the new one lacks are removed).
        stale = {key: None for key in pod.get("status") or {} if key not in new}
        self.state.patch("pods", namespace, pod_name, {"status": {**stale, **new}})
        if new.get("phase") in ("Succeeded", "Failed"):
            self._job_ended(namespace, job, new)

    def _job_ended(self, namespace: str, job: str, pod_status: Obj) -> None:
        if pod_status["phase"] == "Succeeded":
            condition = {"type": "Complete", "status": "True"}
        else:
            reason = (
                "DeadlineExceeded"
                if pod_status.get("reason") == "DeadlineExceeded"
                else "BackoffLimitExceeded"
            )
            condition = {"type": "Failed", "status": "True", "reason": reason, "message": reason}
        if self.state.get("jobs", namespace, job) is not None:
            self.state.patch("jobs", namespace, job, {"status": {"active": 0, "conditions": [condition]}})

    def log(self, ref: str, container: str, text: str) -> None:
        namespace = ref.split("/")[0]
        self.state.append_log(namespace, self.pods[ref], container, text)

    async def succeed(self, ref: str, manifest: OutputManifest, *, in_message: bool = False) -> None:
        """stage-out printed ``manifest`` and exited 0 (optionally its termination message holds it too)."""
        line = output_manifest_line(manifest)
        self.log(ref, STAGE_OUT, f'{{"event": "outputs_staged"}}\n{line}\n')
        out = terminated(0, message=line if in_message else None)
        await self.set_status(ref, status("Succeeded", terminated(0), terminated(0), out))

    async def deadline_job(self, ref: str) -> None:
        """The Job's own activeDeadlineSeconds passed: the controller fails it and deletes its Pod."""
        namespace, job = ref.split("/")
        condition = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "deadline"}
        self.state.patch("jobs", namespace, job, {"status": {"active": 0, "conditions": [condition]}})
        self.state.delete("pods", namespace, await self.pod_of(ref))
