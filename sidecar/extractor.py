"""Archive extraction in a child process, so that parsing an untrusted archive cannot hurt the caller.

Stage-in runs inside the API server for the local and container backends. :func:`extract_in_child` starts
a small Python child (isolated mode, no ``site``, a clean environment) that sets an address-space limit
(RLIMIT_AS, :data:`EXTRACTION_MEMORY`) on itself before it reads a byte, then extracts with
:func:`sidecar.archives.extract_archive`. Whatever the archive does to memory or time, it does it to the
child: a cancel of the waiting task (a cancelled job, or the supervisor's start deadline) kills the child
at once, where a thread could only be abandoned while it went on writing. The child reports a refused
archive as one line on stderr with exit status :data:`EXIT_REFUSED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from pathlib import Path

from sidecar.archives import MAX_MEMBERS, extract_archive
from sidecar.errors import InputStagingError

EXTRACTION_MEMORY = 512 * 1024 * 1024  # address space of the child: the interpreter and the decompressors
EXIT_REFUSED = 3
EXIT_MEMORY = 4
_MAX_MESSAGE = 4096
# The directory holding the ``sidecar`` package: the child imports it from there (it runs with -I -S).
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from sidecar.extractor import main; sys.exit(main(sys.argv[1:]))"
)


async def extract_in_child(
    archive: Path,
    destination: Path,
    *,
    max_extracted_size: int,
    max_members: int = MAX_MEMBERS,
    memory: int = EXTRACTION_MEMORY,
) -> None:
    """:func:`sidecar.archives.extract_archive` in a child process; InputStagingError when refused."""
    argv = [str(archive), str(destination), str(max_extracted_size), str(max_members), str(memory)]
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        "-c",
        _BOOT,
        _PACKAGE_ROOT,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"LANG": "C.UTF-8"},
    )
    try:
        _, err = await child.communicate()
    except BaseException:  # cancelled (or anything else): the extraction stops now, not when it is done
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise
    code = child.returncode
    said = err.decode("utf-8", errors="replace").strip().splitlines()
    last = said[-1][:_MAX_MESSAGE] if said else ""
    if code == 0:
        return
    if code == EXIT_REFUSED:
        raise InputStagingError(last)
    if code == EXIT_MEMORY:
        raise InputStagingError(f"extracting the archive needs more than {memory} bytes of memory")
    if code is not None and code < 0:
        raise InputStagingError(f"extracting the archive was stopped by signal {-code}")
    raise InputStagingError(f"extracting the archive failed (exit status {code})")


def main(args: list[str]) -> int:
    """The child: ``ARCHIVE DESTINATION MAX_BYTES MAX_MEMBERS MEMORY``."""
    archive, destination, max_bytes, max_members, memory = args
    resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    try:
        extract_archive(
            Path(archive), Path(destination), max_extracted_size=int(max_bytes), max_members=int(max_members)
        )
    except InputStagingError as e:
        print(str(e)[:_MAX_MESSAGE], file=sys.stderr)
        return EXIT_REFUSED
    except MemoryError:
        return EXIT_MEMORY
    return 0
