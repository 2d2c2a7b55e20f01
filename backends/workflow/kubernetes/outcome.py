"""Turning a finished Pod into its terminal :class:`BackendUpdate`: the worker log and the outputs.

- **The worker log** is streamed from ``pods/log`` (container ``worker``) into storage at the run's
  ``log_key`` by the backend itself, before the Pod can be removed: stage-out cannot read another
  container's stdout, and the worker image gets no wrapper. The last lines become the update's log tail.
- **The outputs** come from the output manifest stage-out prints as its last stdout line
  (:data:`sidecar.manifest.OUTPUT_MANIFEST_MARKER`). It is looked for first in stage-out's termination
  message (stage-out writes the same line there when it fits in 4096 bytes, see
  :mod:`sidecar.termination`; on a failed exit with none, ``FallbackToLogsOnError`` puts the last log
  lines there: no request), then in the last lines of its log (one request). A required output the
  manifest lists as missing makes the run FAILED/OUTPUT_MISSING, as with every backend.

Both are deterministic for a given Pod, so a restarted backend that finishes the same Pod again uploads the
same log to the same key and reports the same update.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog
from pydantic import ValidationError

from backends.storage.base import StorageBackend, StorageError
from backends.workflow.base import BackendUpdate, OutputRecord, RunPhase, WorkflowBackendError
from backends.workflow.kubernetes.api import KubeApi
from backends.workflow.kubernetes.manifests import RUN_ANNOTATION, STAGE_OUT, WORKER
from backends.workflow.kubernetes.status import PodVerdict, container_statuses, terminated
from sidecar.manifest import OUTPUT_MANIFEST_MARKER, OutputManifest

log = structlog.get_logger("wml.workflow.kubernetes")

_MANIFEST_LOG_LINES = 20  # stage-out prints the manifest last; a few structured log lines may follow


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The part of a JobRun finishing needs, read back from the object's ``wml/run`` annotation."""

    job_id: str
    log_key: str
    required: frozenset[str]

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> RunInfo | None:
        text = ((obj.get("metadata") or {}).get("annotations") or {}).get(RUN_ANNOTATION)
        try:
            data = json.loads(text) if text else None
            if not isinstance(data, dict):
                return None
            required = frozenset(o["name"] for o in data["outputs"] if o["required"])
            return cls(str(data["job_id"]), str(data["log_key"]), required)
        except (json.JSONDecodeError, KeyError, TypeError):
            return None


def parse_manifest(text: str | None) -> OutputManifest | None:
    """The output manifest on the last marker line of ``text``, if there is one."""
    for line in reversed((text or "").splitlines()):
        start = line.find(OUTPUT_MANIFEST_MARKER)
        if start < 0:
            continue
        try:
            return OutputManifest.model_validate_json(line[start + len(OUTPUT_MANIFEST_MARKER) :])
        except ValidationError:
            return None
    return None


async def finish(
    api: KubeApi,
    storage: StorageBackend,
    ref: str,
    verdict: PodVerdict,
    pod: Mapping[str, Any] | None,
    tail_lines: int,
) -> BackendUpdate:
    """The terminal update for ``verdict`` about ``pod`` (None: the Pod is gone)."""
    update = BackendUpdate(ref, verdict.phase, verdict.reason, verdict.message, verdict.exit_code)
    info = None if pod is None else RunInfo.of(pod)
    if pod is None or info is None:
        return update
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    if verdict.worker_started:
        record, tail = await save_worker_log(api, storage, namespace, name, info.log_key, tail_lines)
        update = replace(update, log=record, log_tail=tail)
    if verdict.read_outputs:
        update = await _with_outputs(api, update, pod, info)
    return update


async def _with_outputs(
    api: KubeApi, update: BackendUpdate, pod: Mapping[str, Any], info: RunInfo
) -> BackendUpdate:
    out = terminated(container_statuses(pod).get(STAGE_OUT))
    manifest = parse_manifest(None if out is None else out.get("message"))
    if manifest is None:
        meta = pod["metadata"]
        try:
            chunks = api.log(meta["namespace"], meta["name"], STAGE_OUT, tail_lines=_MANIFEST_LOG_LINES)
            manifest = parse_manifest(b"".join([c async for c in chunks]).decode("utf-8", errors="replace"))
        except WorkflowBackendError as e:
            log.warning("kubernetes_output_manifest_unreadable", ref=update.ref, error=str(e))
    if manifest is None:
        message = "stage-out left no output manifest in its log"
        return replace(update, phase=RunPhase.ERROR, reason="OUTPUT_UPLOAD_FAILED", message=message)
    outputs = tuple(OutputRecord(o.name, o.key, o.size, o.sha256) for o in manifest.outputs)
    missing = sorted(info.required.intersection(manifest.missing))
    if missing:
        message = f"required outputs missing: {', '.join(missing)}"
        return replace(
            update, phase=RunPhase.FAILED, reason="OUTPUT_MISSING", message=message, outputs=outputs
        )
    return replace(update, outputs=outputs)


async def save_worker_log(
    api: KubeApi, storage: StorageBackend, namespace: str, pod: str, key: str, tail_lines: int
) -> tuple[OutputRecord | None, str | None]:
    """Stream the worker's whole log into storage at ``key``; the record and the last lines.

    (None, None) when the log cannot be read or stored: the run's outcome is reported all the same.
    """
    tail = _Tail(tail_lines)
    try:
        info = await storage.put(key, tail.through(api.log(namespace, pod, WORKER)))
    except (WorkflowBackendError, StorageError, OSError, TimeoutError, aiohttp.ClientError) as e:
        log.warning("kubernetes_worker_log_not_saved", pod=pod, error=f"{type(e).__name__}: {e}")
        return None, None
    sha256 = info.sha256 or tail.sha256
    return OutputRecord("log", key, info.size, sha256), tail.text()


class _Tail:
    """Passes chunks on while keeping their sha256 and their last lines."""

    def __init__(self, lines: int) -> None:
        self._lines: deque[bytes] = deque(maxlen=max(1, lines))
        self._want = lines
        self._partial = b""
        self._hash = hashlib.sha256()

    async def through(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self._hash.update(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            self._lines.extend(line[-4096:] for line in complete)
            self._partial = self._partial[-65536:]
            yield chunk

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def text(self) -> str:
        lines = (
            [*self._lines, *([self._partial] if self._partial else [])][-self._want :] if self._want else []
        )
        return "\n".join(line.decode("utf-8", errors="replace") for line in lines)
