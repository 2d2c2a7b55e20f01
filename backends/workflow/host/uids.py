"""A uid of its own for each job on a host: the local sandbox and the container backend run a job's
processes (worker, side-car steps) as ``base + hash(job id) % UID_SPAN``, so two tenants' jobs never share a
uid (but for a hash collision in 65536) and Unix permissions separate them from the server and each other.

Only meaningful when the server runs as root (it can then chown the job's directories to that uid and start
processes as it); the callers decide that.
"""

from __future__ import annotations

import hashlib

UID_SPAN = 65536  # uids of the range; each job takes one by a hash of its id
DEFAULT_UID_BASE = 1_000_000_000  # far above any distribution's users and podman's subordinate ranges


def job_uid(job_id: str, base: int = DEFAULT_UID_BASE) -> int:
    """The uid (and gid) the processes of job ``job_id`` run as."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return base + int.from_bytes(digest[:4], "big") % UID_SPAN
