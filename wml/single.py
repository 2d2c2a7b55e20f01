"""One serving process per embedded (SQLite) database: SQLite is the single-process default.

A second ``wml serve`` on the same SQLite database would run its own supervisor over the same jobs and
reconcile them as lost; it is refused at start, naming the way to run several processes (PostgreSQL).
The lock is an exclusive ``flock`` on ``<database>.serve-lock``, held for the process's life (the kernel
drops it when the process dies, however it dies). Short CLI commands (``wml consumers create``) do not
take it: they may run beside the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyServingError(RuntimeError):
    """Another process serves this SQLite database."""


def hold_sqlite(url: str) -> int | None:
    """Take the serving lock of the SQLite database at ``url`` (its file descriptor: keep it open), or
    None for another database. AlreadyServingError when another process holds it."""
    scheme, _, rest = url.partition(":///")
    database = rest.split("?", 1)[0]
    if not scheme.startswith("sqlite") or not database or database == ":memory:":
        return None
    path = Path(database).with_name(Path(database).name + ".serve-lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyServingError(
            f"another process already serves the SQLite database {database}: SQLite is the "
            "single-process embedded default; to run several processes, use PostgreSQL (WML_DATABASE_URL)"
        ) from None
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
