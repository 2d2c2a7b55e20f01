"""The state of the fake Kubernetes API server (see kube_api.py): objects, the event history, logs.

Behaves like the real API server where the backend can tell: a global resourceVersion bumped by every
change, events kept in order (a watch resumes after any version still in the history, and gets 410 Gone
for a compacted one), label selectors (``k=v``, ``k!=v``, ``k``, ``!k``), uid / creationTimestamp,
``stringData`` folded into base64 ``data`` for Secrets, garbage collection of dependents through
ownerReferences (Jobs deleted without a propagationPolicy orphan their Pods, as the real API does), and
namespaces that delete their contents (optionally after a while in ``Terminating``).

Everything is in-process and single-threaded (asyncio): the tests reach in to play the controller.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str | None, str]  # (plural, namespace, name)

KINDS: dict[str, tuple[str, str, bool]] = {  # plural -> (kind, apiVersion, namespaced)
    "pods": ("Pod", "v1", True),
    "secrets": ("Secret", "v1", True),
    "resourcequotas": ("ResourceQuota", "v1", True),
    "namespaces": ("Namespace", "v1", False),
    "jobs": ("Job", "batch/v1", True),
    "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1", True),
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "code": self.code,
            "reason": self.reason,
            "message": self.message,
        }


def matches(labels: dict[str, str], selector: str | None) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class LogBuffer:
    data: bytearray = field(default_factory=bytearray)
    closed: bool = False


class KubeState:
    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self.version = 0
        self.history: list[tuple[int, str, str, Obj]] = []  # (version, plural, type, object)
        self.compacted = 0  # versions at or below this are gone from the history
        self.changed = asyncio.Condition()
        self.logs: dict[tuple[str, str, str], LogBuffer] = {}
        self.listeners: list[Callable[[str, str, Obj], None]] = []
        self.namespace_termination = 0.0  # seconds a deleted namespace stays Terminating
        self._tasks: set[asyncio.Task[None]] = set()

    # -- reading ---------------------------------------------------------------------------------------

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        obj = self.objects.get((plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def select(self, plural: str, namespace: str | None = None, selector: str | None = None) -> list[Obj]:
        return [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if p == plural and (namespace is None or ns == namespace)
            if matches(obj["metadata"].get("labels") or {}, selector)
        ]

    def created(self, plural: str) -> list[Obj]:
        """Every object of ``plural`` as it was created (from the history: deleted ones too)."""
        return [copy.deepcopy(obj) for _, p, kind, obj in self.history if p == plural and kind == "ADDED"]

    def labelled(self, selector: str) -> list[Key]:
        """Every object (any kind) whose labels match: what a test checks is gone."""
        return [
            key for key, obj in self.objects.items() if matches(obj["metadata"].get("labels") or {}, selector)
        ]

    # -- writing ---------------------------------------------------------------------------------------

    def create(self, plural: str, namespace: str | None, body: Obj) -> Obj:
        kind, api_version, namespaced = KINDS[plural]
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if namespaced:
            if meta.get("namespace", namespace) != namespace:
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the URL")
            self._check_namespace(namespace)
            meta["namespace"] = namespace
        key = (plural, namespace if namespaced else None, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
        obj["kind"], obj["apiVersion"] = kind, api_version
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if plural == "secrets":
            data = obj.setdefault("data", {})
            for k, v in (obj.pop("stringData", None) or {}).items():
                data[k] = base64.b64encode(v.encode()).decode()
        if plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        self.objects[key] = obj
        self._record(plural, "ADDED", obj)
        return copy.deepcopy(obj)

    def patch(self, plural: str, namespace: str | None, name: str, patch: Obj) -> Obj:
        """A JSON merge patch (RFC 7386), as ``application/merge-patch+json`` does."""
        key = (plural, namespace, name)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        merged = _merge(self.objects[key], patch)
        self.objects[key] = merged
        self._record(plural, "MODIFIED", merged)
        return copy.deepcopy(merged)

    def delete(self, plural: str, namespace: str | None, name: str, propagation: str | None = None) -> Obj:
        key = (plural, namespace, name)
        obj = self.objects.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        if plural == "namespaces" and self.namespace_termination > 0:
            if obj["status"].get("phase") != "Terminating":
                self.patch(plural, None, name, {"status": {"phase": "Terminating"}})
                task = asyncio.get_running_loop().create_task(self._terminate_later(name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return copy.deepcopy(self.objects[key])
        self._remove(key, propagation)
        return obj

    async def _terminate_later(self, name: str) -> None:
        await asyncio.sleep(self.namespace_termination)
        if ("namespaces", None, name) in self.objects:
            self._remove(("namespaces", None, name), None)

    def _remove(self, key: Key, propagation: str | None) -> None:
        obj = self.objects.pop(key)
        plural = key[0]
        if plural == "namespaces":
            for inner in [k for k in self.objects if k[1] == key[2]]:
                if inner in self.objects:
                    self._remove(inner, "Background")
        policy = propagation or ("Orphan" if plural == "jobs" else "Background")
        if policy != "Orphan":
            uid = obj["metadata"]["uid"]
            for dependent, other in list(self.objects.items()):
                owners = other["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners) and dependent in self.objects:
                    self._remove(dependent, "Background")
        for log_key in [k for k in self.logs if plural == "pods" and k[:2] == (key[1], key[2])]:
            self.logs[log_key].closed = True
        self._record(plural, "DELETED", obj)

    def _check_namespace(self, namespace: str | None) -> None:
        ns = self.objects.get(("namespaces", None, namespace or ""))
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
        if ns["status"].get("phase") == "Terminating":
            raise ApiError(403, "Forbidden", f"namespace {namespace} is being terminated")

    def _record(self, plural: str, kind: str, obj: Obj) -> None:
        self.version += 1
        if kind != "DELETED":
            obj["metadata"]["resourceVersion"] = str(self.version)
        snapshot = copy.deepcopy(obj)
        snapshot["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, plural, kind, snapshot))
        for listener in list(self.listeners):
            listener(kind, plural, copy.deepcopy(snapshot))
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def compact(self) -> None:
        """Forget the history so far: a watch resuming from any version seen until now gets 410 Gone."""
        self.compacted = self.version
        self.history.clear()

    # -- container logs --------------------------------------------------------------------------------

    def append_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        self.logs.setdefault((namespace, pod, container), LogBuffer()).data.extend(text.encode())
        self._wake()

    def close_log(self, namespace: str, pod: str, container: str) -> None:
        self.logs.setdefault((namespace, pod, container), LogBuffer()).closed = True
        self._wake()


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result
