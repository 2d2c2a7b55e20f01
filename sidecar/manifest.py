"""The manifests the side-car reads and writes (JSON files, or objects passed in-process)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class InputEntry(BaseModel):
    slot: str
    kind: str = Field(pattern="^(file|archive|env)$")
    path: str  # relative to the inputs root
    key: str
    size: int
    sha256: str


class StageInManifest(BaseModel):
    inputs: list[InputEntry] = []
    # key -> presigned GET URL: when given (even empty), the inputs are fetched through these and nothing
    # else (sidecar.urlstorage); the side-car then needs no storage settings at all.
    urls: dict[str, str] | None = None


class OutputEntry(BaseModel):
    name: str
    path: str  # relative to the outputs root
    required: bool = True
    key: str


class StageOutManifest(BaseModel):
    outputs: list[OutputEntry] = []
    urls: dict[str, str] | None = None  # key -> presigned PUT URL, as for stage-in
    log_path: str | None = None  # absolute path of the worker log to upload, when the side-car saves it
    log_key: str | None = None
    result_path: str  # where the output manifest is written, as the last act


class UploadedObject(BaseModel):
    name: str
    key: str
    size: int
    sha256: str


class OutputManifest(BaseModel):
    """Written by stage-out as its last act; the supervisor records outputs from it."""

    outputs: list[UploadedObject] = []
    missing: list[str] = []  # declared outputs that were not there (required or not)
    log: UploadedObject | None = None


# Where a backend cannot read the file at ``result_path`` (Kubernetes: it lives in the pod), stage-out
# also prints the output manifest as its last stdout line, prefixed with this marker, and the backend
# reads it from the container's log.
OUTPUT_MANIFEST_MARKER = "wml-output-manifest: "


def output_manifest_line(manifest: OutputManifest) -> str:
    """The one line (no newline inside) that carries ``manifest`` in a container log."""
    return OUTPUT_MANIFEST_MARKER + manifest.model_dump_json()
