"""Choose a storage backend by URL scheme (``WML_STORAGE``), importing only the one asked for.

Each implementation is named in :data:`BACKENDS` as ``"module:Class"`` and must offer a
``from_url(url, *, credentials=None) -> instance`` class method (backends that need no credentials ignore
them); nothing is imported until a URL asks for it, so optional dependencies (aiobotocore for ``s3``) are
needed only by deployments that use them. Credentials are passed in by the entry point, which has them
from the settings: no backend reads the environment itself.
"""

from __future__ import annotations

from typing import cast
from urllib.parse import quote, urlsplit

from backends.loading import load_backend_class
from backends.storage.base import StorageBackend, StorageCredentials

BACKENDS: dict[str, str] = {
    "file": "backends.storage.file:FileStorageBackend",
    "s3": "backends.storage.s3.backend:S3StorageBackend",
}


class StorageConfigurationError(ValueError):
    """The storage URL names no known backend, or one that cannot be loaded in this build."""


def create_storage(url: str, *, credentials: StorageCredentials | None = None) -> StorageBackend:
    """Build the backend for ``url``; a URL without a scheme is a path for the file backend.

    ``credentials``: explicit keys for backends that use them (s3); None lets such a backend use its
    standard mechanisms (for s3: the AWS environment, shared config, instance and pod roles).
    """
    if not url.strip():
        raise StorageConfigurationError("the storage URL is empty")
    scheme = urlsplit(url).scheme if "://" in url or url.startswith("file:") else ""
    if not scheme:
        scheme, url = "file", "file:" + quote(url)  # a plain path, absolute or relative
    scheme = scheme.lower()
    target = BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{name}://" for name in sorted(BACKENDS))
        raise StorageConfigurationError(f"unknown storage scheme {scheme!r}; known schemes: {known}")
    backend_class = load_backend_class("storage", scheme, target, StorageConfigurationError)
    try:
        backend = backend_class.from_url(url, credentials=credentials)
    except ValueError as e:
        raise StorageConfigurationError(f"invalid {scheme} storage URL: {e}") from e
    return cast(StorageBackend, backend)
