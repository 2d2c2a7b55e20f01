"""Stage-out's termination message: the output manifest line, readable from the Pod's status for free.

Kubernetes copies the file at a container's ``terminationMessagePath`` (``/dev/termination-log`` unless
set) into ``state.terminated.message`` of its status. The kubelet keeps the file's last 4096 bytes, then
gives each container of the Pod an even share of 12 KiB (4096 bytes each for our three containers). The
Kubernetes backend looks for the output manifest there first, and reads stage-out's log (one more API
request per job) only when it is not there. So stage-out writes the same line it prints, whole or not at
all: a longer one would arrive cut, and is not written.

Where: ``--termination-message`` or ``WML_TERMINATION_MESSAGE_PATH``, else the default. The default path is
written only if it exists (the kubelet creates it before the container starts; outside Kubernetes nothing
is created under ``/dev``); a path given explicitly is written (created if need be) when its directory
exists. Writing is best effort: the log line is the fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from sidecar.manifest import OutputManifest, output_manifest_line

TERMINATION_MESSAGE_ENV = "WML_TERMINATION_MESSAGE_PATH"
DEFAULT_TERMINATION_MESSAGE_PATH = Path("/dev/termination-log")
MAX_TERMINATION_MESSAGE_BYTES = 4096

log = structlog.get_logger("wml.sidecar")


@dataclass(frozen=True, slots=True)
class TerminationMessage:
    """Where this container's termination message goes, and whether that path was asked for."""

    path: Path = DEFAULT_TERMINATION_MESSAGE_PATH
    explicit: bool = False

    @classmethod
    def from_setting(
        cls, path: Path | str | None = None, environ: Mapping[str, str] | None = None
    ) -> TerminationMessage:
        """The path given, else the one in ``WML_TERMINATION_MESSAGE_PATH``, else the default."""
        value = path or (os.environ if environ is None else environ).get(TERMINATION_MESSAGE_ENV)
        return cls(Path(value), True) if value else cls()

    def write(self, text: str) -> bool:
        """Write ``text`` as the whole message; False (nothing written) if too long or nowhere to write."""
        data = text.encode("utf-8")
        if len(data) > MAX_TERMINATION_MESSAGE_BYTES:
            log.info("termination_message_too_long", size=len(data), limit=MAX_TERMINATION_MESSAGE_BYTES)
            return False
        if not (self.path.parent.is_dir() if self.explicit else self.path.is_file()):
            return False
        flags = os.O_WRONLY | os.O_TRUNC | (os.O_CREAT if self.explicit else 0)
        try:
            fd = os.open(self.path, flags, 0o644)
            with os.fdopen(fd, "wb") as sink:
                sink.write(data)
        except OSError as e:
            log.warning("termination_message_not_written", path=str(self.path), error=e.strerror or str(e))
            return False
        return True


def _print_line(line: str) -> None:
    print(line, flush=True)


def publish_output_manifest(
    result: OutputManifest, termination: TerminationMessage, say: Callable[[str], None] = _print_line
) -> None:
    """Hand the output manifest to a backend that cannot read ``result_path``: the last stdout line (the
    container log), and the termination message when it fits."""
    line = output_manifest_line(result)
    say(line)
    termination.write(line)
