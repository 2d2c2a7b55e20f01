"""The side-car as a program: ``wml sidecar stage-in|stage-out --manifest FILE --root DIR``.

In a pod it runs from the side-car image (``sidecar/Containerfile``): ``stage-in`` as an init container
before the worker, ``stage-out`` after it. The local backend runs the same staging code in-process. A
manifest may carry presigned URLs for its objects (``urls``: key -> URL; the Kubernetes backend mints them
per job): the side-car then uses those and nothing else (:mod:`sidecar.urlstorage`). Otherwise the
storage comes from the settings in the environment, read by the ``wml`` entry point and handed in here:
``WML_STORAGE`` (``s3://bucket?endpoint=...&region=...`` or ``file:///path``) and, for S3,
``WML_S3_ACCESS_KEY_ID`` / ``WML_S3_SECRET_ACCESS_KEY`` or the standard AWS variables and roles.

Manifests are JSON documents (see :mod:`sidecar.manifest`):

- both may carry ``"urls": {key: presigned URL}`` (GET for stage-in, PUT for stage-out): see above.
- stage-in: ``{"inputs": [{"slot", "kind": "file|archive|env", "path", "key", "size", "sha256"}]}``;
  each object is streamed from ``key``, checked against ``size`` and ``sha256`` and placed at ``path``
  under ``--root`` (archives extracted safely).
- stage-out: ``{"outputs": [{"name", "path", "required", "key"}], "log_path", "log_key",
  "result_path"}``; every output found under ``--root`` is streamed to its ``key`` (a directory as a tar),
  then the output manifest (names, keys, sizes, sha256, and the missing outputs) is written to
  ``result_path`` and printed as the last stdout line (after ``sidecar.manifest.OUTPUT_MANIFEST_MARKER``)
  for backends that can read only the container's log; the same line goes to the container's termination
  message when it fits in 4096 bytes (``--termination-message`` or ``WML_TERMINATION_MESSAGE_PATH``,
  default ``/dev/termination-log``: see :mod:`sidecar.termination`).

Transient storage errors are retried with exponential backoff (``--attempts`` tries per transfer).

Exit codes (stable: the workflow backends map them to job reasons):

====  =====================================================================================================
0     done
1     unexpected failure (an output that cannot be read, the output manifest cannot be written, a bug)
2     usage: bad arguments, a manifest that cannot be read or is invalid, no or an invalid storage setting
3     input missing or corrupt: an input object is absent, has the wrong size or sha256, or cannot be
      placed (a refused archive member, an invalid dotenv file, a path outside the root)
4     output missing: a required output was not produced (the output manifest is written all the same)
5     storage unavailable: storage could not be reached or refused to serve, even after retrying
====  =====================================================================================================
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from pydantic import BaseModel, ValidationError

from backends.storage.base import (
    InvalidRangeError,
    ObjectNotFoundError,
    StorageBackend,
    StorageCredentials,
    StorageError,
)
from backends.storage.registry import create_storage
from sidecar.errors import InputStagingError, OutputUploadError
from sidecar.manifest import StageInManifest, StageOutManifest
from sidecar.staging import RetryPolicy, stage_in, stage_out
from sidecar.termination import TerminationMessage, publish_output_manifest
from sidecar.urlstorage import UrlStorage

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT_MISSING = 4
EXIT_STORAGE = 5

STAGE_IN = "stage-in"
STAGE_OUT = "stage-out"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

log = structlog.get_logger("wml.sidecar")


class UsageError(Exception):
    """The program was called wrongly; nothing was transferred."""


def run_step(
    action: str,
    manifest_path: Path,
    root: Path,
    *,
    storage_url: str | None,
    credentials: StorageCredentials | None = None,
    attempts: int = 4,
    termination_message: Path | None = None,
) -> int:
    """Run ``stage-in`` or ``stage-out`` to the end and return the exit code (see the module docstring).

    ``termination_message``: where stage-out writes its output manifest line for Kubernetes (None: from
    ``WML_TERMINATION_MESSAGE_PATH``, else ``/dev/termination-log`` if it exists).
    """
    try:
        manifest = _load_manifest(action, manifest_path)
        if not root.is_dir():
            raise UsageError(f"--root {str(root)!r} is not a directory")
        if attempts < 1:
            raise UsageError("--attempts must be at least 1")
        storage = storage_for(manifest, storage_url, credentials)
    except UsageError as e:
        return _fail(EXIT_USAGE, str(e))
    termination = TerminationMessage.from_setting(termination_message)
    return asyncio.run(_stage(action, manifest, root, storage, RetryPolicy(attempts=attempts), termination))


def storage_for(
    manifest: StageInManifest | StageOutManifest,
    storage_url: str | None,
    credentials: StorageCredentials | None = None,
) -> StorageBackend:
    """The manifest's presigned URLs when it carries them (no storage settings needed), else the storage
    ``WML_STORAGE`` names; UsageError when there is neither."""
    if manifest.urls is not None:
        return UrlStorage(manifest.urls)
    if not storage_url:
        raise UsageError("WML_STORAGE is not set: the side-car needs the storage URL (or presigned URLs)")
    try:
        return create_storage(storage_url, credentials=credentials)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _load_manifest(action: str, path: Path) -> StageInManifest | StageOutManifest:
    if action not in (STAGE_IN, STAGE_OUT):
        raise UsageError(f"unknown step {action!r}; use {STAGE_IN} or {STAGE_OUT}")
    model: type[BaseModel] = StageInManifest if action == STAGE_IN else StageOutManifest
    try:
        with path.open("rb") as source:
            text = source.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read the manifest {str(path)!r}: {e.strerror or e}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise UsageError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = model.model_validate_json(text)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '(document)'}: {err['msg']}" for err in e.errors()
        )
        raise UsageError(f"invalid {action} manifest: {problems}") from None
    assert isinstance(manifest, StageInManifest | StageOutManifest)
    return manifest


async def _stage(
    action: str,
    manifest: StageInManifest | StageOutManifest,
    root: Path,
    storage: StorageBackend,
    retry: RetryPolicy,
    termination: TerminationMessage,
) -> int:
    try:
        if isinstance(manifest, StageInManifest):
            await stage_in(storage, manifest, root, retry=retry)
            return EXIT_OK
        result = await stage_out(storage, manifest, root, retry=retry)
    except InputStagingError as e:
        return _fail(EXIT_STORAGE if _storage_failed(e) else EXIT_INPUT, str(e))
    except OutputUploadError as e:
        return _fail(EXIT_STORAGE if _storage_failed(e) else EXIT_FAILURE, str(e))
    except StorageError as e:
        return _fail(EXIT_STORAGE, f"storage failed: {e}")
    except OSError as e:
        return _fail(EXIT_FAILURE, f"{action} failed: {e.strerror or e}")
    finally:
        await storage.close()
    # The last stdout line (and the termination message) carry the output manifest too, for backends
    # that can read only the container's log or status.
    publish_output_manifest(result, termination)
    required = {entry.name for entry in manifest.outputs if entry.required}
    missing = [name for name in result.missing if name in required]
    if missing:
        return _fail(EXIT_OUTPUT_MISSING, f"required outputs missing: {', '.join(missing)}")
    return EXIT_OK


def _storage_failed(error: Exception) -> bool:
    """True when storage itself failed (unreachable, refusing), not the object asked for."""
    cause = error.__cause__
    return isinstance(cause, StorageError) and not isinstance(cause, ObjectNotFoundError | InvalidRangeError)


def _fail(code: int, message: str) -> int:
    log.error("sidecar_failed", exit_code=code, error=message)  # the log goes to stderr
    return code
