"""posix_spawn(3) without holding the GIL, for starting the local backend's runners.

:func:`os.posix_spawn` keeps the GIL until the child has exec'd (glibc spawns with a vfork-like clone and
waits for the exec), so on a busy machine every runner start stalled the server's event loop for
milliseconds. Calling the C library's ``posix_spawn`` through :mod:`ctypes` releases the GIL for the call,
and the spawn already runs in a worker thread. Only glibc's flag values are known here: elsewhere
:func:`spawn` is :func:`os.posix_spawn` as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping, Sequence

# glibc's <spawn.h>
_SETSIGDEF, _SETSIGMASK, _SETSID = 0x04, 0x08, 0x80
_OPAQUE = 1024  # bytes for posix_spawn_file_actions_t (80 on glibc) and posix_spawnattr_t (336)
_SIGSET = 128  # bytes of a sigset_t


def _glibc() -> ctypes.CDLL | None:
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        libc.posix_spawn  # noqa: B018 (present, or AttributeError: fall back)
        return libc
    except (AttributeError, OSError, ValueError):
        return None


_LIBC = _glibc()


def spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: int,
    output: str,
    default_signals: Sequence[signal.Signals],
) -> int:
    """Start ``path`` in a new session with ``stdin`` as its stdin, stdout and stderr appended to
    ``output`` (created 0600), ``default_signals`` at their default action and no signal blocked."""
    if _LIBC is None:
        return os.posix_spawn(
            path,
            list(argv),
            dict(env),
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_OPEN, 1, output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
            setsigdef=tuple(default_signals),
            setsigmask=(),
        )
    return _spawn_glibc(_LIBC, path, argv, env, stdin, output, default_signals)


def _spawn_glibc(
    libc: ctypes.CDLL,
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: int,
    output: str,
    default_signals: Sequence[signal.Signals],
) -> int:
    actions, attr = ctypes.create_string_buffer(_OPAQUE), ctypes.create_string_buffer(_OPAQUE)
    sigdef, sigmask = ctypes.create_string_buffer(_SIGSET), ctypes.create_string_buffer(_SIGSET)
    args = (ctypes.c_char_p * (len(argv) + 1))(*[os.fsencode(a) for a in argv], None)
    envp = (ctypes.c_char_p * (len(env) + 1))(*[os.fsencode(f"{k}={v}") for k, v in env.items()], None)
    libc.posix_spawn_file_actions_init(actions)
    libc.posix_spawnattr_init(attr)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        steps = [
            libc.posix_spawn_file_actions_adddup2(actions, stdin, 0),
            libc.posix_spawn_file_actions_addopen(actions, 1, os.fsencode(output), flags, 0o600),
            libc.posix_spawn_file_actions_adddup2(actions, 1, 2),
            libc.sigemptyset(sigdef),
            *(libc.sigaddset(sigdef, int(s)) for s in default_signals),
            libc.sigemptyset(sigmask),
            libc.posix_spawnattr_setsigdefault(attr, sigdef),
            libc.posix_spawnattr_setsigmask(attr, sigmask),
            libc.posix_spawnattr_setflags(attr, ctypes.c_short(_SETSIGDEF | _SETSIGMASK | _SETSID)),
        ]
        if any(steps):
            raise OSError(ctypes.get_errno(), "cannot prepare posix_spawn")
        pid = ctypes.c_int()
        err = libc.posix_spawn(ctypes.byref(pid), os.fsencode(path), actions, attr, args, envp)
        if err:
            raise OSError(err, os.strerror(err), path)
        return pid.value
    finally:
        libc.posix_spawn_file_actions_destroy(actions)
        libc.posix_spawnattr_destroy(attr)
