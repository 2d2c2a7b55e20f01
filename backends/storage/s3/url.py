"""The ``s3://`` storage URL: which bucket, where, and how to talk to it (no aiobotocore needed here).

``s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME&part_size=BYTES&concurrency=N&max_attempts=N
&presign_endpoint=URL``

- ``endpoint``: the S3 server (``http://minio:9000``); omitted for AWS itself.
- ``region``: the region to sign for (default ``us-east-1``, which MinIO uses unless configured otherwise).
- ``part_size``: bytes per multipart part (default 8 MiB; 5 MiB to 5 GiB, the limits of S3).
- ``concurrency``: parts uploaded at once by one write (default 4).
- ``max_attempts``: attempts per request, retries of connection errors and 5xx included (default 3).
- ``presign_endpoint``: the endpoint presigned URLs are made for, when consumers reach the server under
  another name than the service does (``https://s3.example.org`` outside, ``http://minio:9000`` inside).

Credentials never belong in the URL (it is logged and shown in errors); they come from the settings or
the standard AWS environment, and a URL carrying any is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from backends.storage.base import InvalidKeyError
from backends.storage.file import validate_key

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (except the last)
MAX_PART_SIZE = 5 * 1024 * MiB
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_REGION = "us-east-1"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9-]{1,40}")
_KNOWN = ("endpoint", "region", "part_size", "concurrency", "max_attempts", "presign_endpoint")


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    endpoint: str | None = None
    region: str = DEFAULT_REGION
    prefix: str = ""  # "" or "some/prefix/": prepended to every key
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = 4
    max_attempts: int = 3
    presign_endpoint: str | None = None

    def describe(self) -> str:
        """For messages: the endpoint and bucket, nothing secret."""
        return f"{self.endpoint or 'aws'} (bucket {self.bucket!r})"


def parse_s3_url(url: str) -> S3Location:
    """Parse an ``s3://`` URL; ValueError says what is wrong without repeating the URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "s3":
        raise ValueError("not an s3:// URL")
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in the storage URL; use the S3 credential settings")
    if parts.fragment:
        raise ValueError("s3 storage URLs take no fragment")
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError("the bucket name must be 3-63 lowercase letters, digits, dots or hyphens")
    prefix = parts.path.strip("/")
    if prefix:
        try:
            validate_key(prefix)  # the same rules as keys: no "..", no empty segments
        except InvalidKeyError:
            raise ValueError("the key prefix must be segments of letters, digits, '.', '_' or '-'") from None
        prefix += "/"
    query = _query(parts.query)
    region = query.get("region", DEFAULT_REGION)
    if not _REGION.fullmatch(region):
        raise ValueError("region must be a region name such as us-east-1")
    return S3Location(
        bucket=bucket,
        endpoint=_endpoint(query.get("endpoint"), "endpoint"),
        region=region,
        prefix=prefix,
        part_size=_integer(query, "part_size", DEFAULT_PART_SIZE, MIN_PART_SIZE, MAX_PART_SIZE),
        concurrency=_integer(query, "concurrency", 4, 1, 64),
        max_attempts=_integer(query, "max_attempts", 3, 1, 20),
        presign_endpoint=_endpoint(query.get("presign_endpoint"), "presign_endpoint"),
    )


def _query(text: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise ValueError("the query string is malformed") from None
    query: dict[str, str] = {}
    for name, value in pairs:
        if name not in _KNOWN:
            raise ValueError(f"unknown parameter {name!r}; known: {', '.join(_KNOWN)}")
        if name in query:
            raise ValueError(f"parameter {name!r} given twice")
        query[name] = value
    return query


def _endpoint(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ValueError(f"credentials do not belong in {name}; use the S3 credential settings")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{name} must be a bare server URL (scheme, host and port)")
    return f"{parts.scheme}://{parts.netloc}"


def _integer(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value
