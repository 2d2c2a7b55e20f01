"""Quotas that stop a paying consumer from filling the provider's storage: the bytes a consumer keeps
(uploads, its jobs' outputs and logs, the announced size of pending uploads) and how many announced
uploads it may leave incomplete. Against the real file service, file storage and database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.auth import Principal
from core.errors import QuotaExceededError
from core.models import new_id
from core.services import Services
from tests.support.services import running_services

QUOTA = 1000
MAX_PENDING = 2


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with running_services(
        tmp_path, max_stored_bytes_per_consumer=QUOTA, max_pending_uploads_per_consumer=MAX_PENDING
    ) as opened:
        yield opened


async def _consumer(services: Services, name: str) -> Principal:
    consumer = await services.store.grants.create_consumer(new_id("c"), name)
    grant = await services.store.grants.create_grant(new_id("g"), consumer.id, "dummy-job", new_id("h"), None)
    return Principal(consumer.id, frozenset({grant.id}), frozenset({"dummy-job"}))


async def _bytes(size: int, chunk: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, size, chunk):
        yield b"x" * min(chunk, size - start)


def _stored_objects(data_dir: Path) -> list[str]:
    """Every object (and leftover temp file) of the file storage, by its path."""
    return sorted(
        str(p.relative_to(data_dir / "files")) for p in (data_dir / "files").rglob("*") if p.is_file()
    )


async def test_an_upload_beyond_the_consumers_stored_bytes_is_refused_and_leaves_nothing(
    services: Services, tmp_path: Path
) -> None:
    alice = await _consumer(services, "alice")
    bob = await _consumer(services, "bob")
    kept = await services.files.upload(alice, "a.bin", None, _bytes(700))

    with pytest.raises(QuotaExceededError, match=f"limit of {QUOTA} bytes"):
        await services.files.upload(alice, "b.bin", None, _bytes(400))

    assert _stored_objects(tmp_path) == [kept.storage_key]  # nothing partial left behind
    assert (await services.files.upload(alice, "c.bin", None, _bytes(300))).size == 300  # exactly full
    with pytest.raises(QuotaExceededError):
        await services.files.upload(alice, "d.bin", None, _bytes(1))
    assert (await services.files.upload(bob, "b.bin", None, _bytes(400))).size == 400  # another's room
    await services.files.delete(alice, kept.id)
    assert (await services.files.upload(alice, "e.bin", None, _bytes(700))).size == 700  # room again


async def test_announced_uploads_reserve_their_size_and_are_capped_in_number(services: Services) -> None:
    alice = await _consumer(services, "alice")
    first, _, _ = await services.files.create_upload(alice, "a.bin", 600, None, None)

    with pytest.raises(QuotaExceededError, match="limit of"):
        await services.files.create_upload(alice, "b.bin", 500, None, None)  # 600 are reserved
    with pytest.raises(QuotaExceededError, match="limit of"):
        await services.files.upload(alice, "c.bin", None, _bytes(500))
    await services.files.create_upload(alice, "d.bin", 100, None, None)
    with pytest.raises(QuotaExceededError, match=f"at most {MAX_PENDING} announced uploads"):
        await services.files.create_upload(alice, "e.bin", 1, None, None)
    assert first.size == 0


async def test_an_announced_upload_may_fill_its_own_reservation(services: Services) -> None:
    alice = await _consumer(services, "alice")
    pending, url, _ = await services.files.create_upload(alice, "a.bin", QUOTA, None, None)
    expires, signature = url.split("expires=")[1].split("&signature=")

    done = await services.files.receive_upload(pending.id, expires, signature, _bytes(QUOTA))

    assert done.size == QUOTA
    with pytest.raises(QuotaExceededError):
        await services.files.upload(alice, "more.bin", None, _bytes(1))
