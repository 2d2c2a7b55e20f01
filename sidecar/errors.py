"""The side-car's errors: what went wrong in stage-in or stage-out, in words safe to show a consumer.

The supervisor maps them onto job reasons: InputStagingError -> ``INPUT_STAGING_FAILED``,
OutputUploadError -> ``OUTPUT_UPLOAD_FAILED``. Messages name slots, outputs and archive members, never
file contents or credentials.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every side-car failure."""


class InputStagingError(SidecarError):
    """An input could not be fetched, verified or placed (bad path, checksum, archive member, dotenv)."""


class OutputUploadError(SidecarError):
    """An output could not be read or uploaded, even after retrying transient storage errors."""
