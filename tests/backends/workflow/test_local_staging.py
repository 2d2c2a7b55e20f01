"""Stage-in of the local backend cannot outlive its job: an archive is extracted by a child process that a
cancel kills at once (a thread, as before, went on extracting after the job was reported canceled)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from backends.workflow.base import InputKind, RunPhase
from tests.support.bombs import many_members_tar_gz


def files_under(root: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(root))


def extractors(job_dir: Path) -> list[int]:
    """Live processes extracting into ``job_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"sidecar.extractor" in cmdline and str(job_dir).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


async def test_cancel_during_the_extraction_of_a_large_archive_stops_it_at_once(
    local_backend_factory, local_work_dir: Path, updates_of, make_run, upload
) -> None:
    archive = many_members_tar_gz(20_000)  # seconds of extraction here, a few hundred KiB to upload
    bundle = await upload("consumers/c1/files/big", archive, "bundle", InputKind.ARCHIVE, "bundle")
    backend = local_backend_factory()
    await backend.start()
    try:
        updates = updates_of(backend)
        ref = await backend.submit(make_run(inputs=(bundle,)))
        inputs = local_work_dir / ref / "inputs"
        async with asyncio.timeout(30):
            while files_under(inputs) < 500:  # under way
                await asyncio.sleep(0.02)

        await backend.cancel(ref)
        final = await updates.terminal(ref)
        extracted = files_under(inputs)
        await asyncio.sleep(1.0)

        assert final.phase == RunPhase.CANCELED
        assert extractors(local_work_dir / ref) == []
        assert 500 <= extracted < 20_000
        assert files_under(inputs) == extracted  # nothing is extracting any more
        assert updates.phases(ref) == [RunPhase.INITIALIZING, RunPhase.CANCELED]
    finally:
        await backend.close()
