"""The rules of creating and managing jobs, without the API: what a consumer may bind and run, and that
another consumer's ids answer exactly like unknown ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.auth import OPERATOR, Principal
from core.errors import ConflictError, NotFoundError, QuotaExceededError, ValidationError
from core.models import FileOrigin, FileRecord, FileStatus, new_id, utcnow
from core.services import Services
from core.states import JobState
from tests.support.services import running_services

MAX_QUEUED = 3


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with running_services(tmp_path, max_queued_jobs_per_consumer=MAX_QUEUED) as opened:
        yield opened


async def _consumer(services: Services, name: str, *assets: str) -> Principal:
    consumer = await services.store.grants.create_consumer(new_id("c"), name)
    grants = [
        await services.store.grants.create_grant(new_id("g"), consumer.id, a, new_id("h"), None)
        for a in assets
    ]
    return Principal(consumer.id, frozenset(g.id for g in grants), frozenset(assets))


async def _file(
    services: Services, owner: Principal, size: int = 10, status: FileStatus = FileStatus.READY
) -> str:
    assert owner.consumer_id is not None
    record = FileRecord(
        id=new_id("f"),
        consumer_id=owner.consumer_id,
        grant_id=sorted(owner.grant_ids)[0],
        job_id=None,
        name="data.bin",
        size=size,
        sha256=None,
        content_type="application/octet-stream",
        origin=FileOrigin.UPLOAD,
        status=status,
        storage_key=f"k/{new_id('k')}",
        created_at=utcnow(),
        expires_at=None,
    )
    await services.store.files.insert_file(record)
    return record.id


def _not_found_message(error: NotFoundError, ident: str) -> str:
    return error.message.replace(ident, "<id>")


async def test_another_consumers_file_answers_exactly_like_an_unknown_one(services: Services) -> None:
    alice = await _consumer(services, "alice", "small-input")
    bob = await _consumer(services, "bob", "small-input")
    bobs, unknown = await _file(services, bob), new_id("f")
    messages = []
    for ident in (bobs, unknown):
        with pytest.raises(NotFoundError) as raised:
            await services.jobs.create(alice, "small-input", [("data", ident)], None)
        messages.append(_not_found_message(raised.value, ident))
    assert messages[0] == messages[1]


async def test_a_file_not_yet_complete_cannot_be_bound(services: Services) -> None:
    alice = await _consumer(services, "alice", "small-input")
    pending = await _file(services, alice, status=FileStatus.PENDING)
    with pytest.raises(NotFoundError):
        await services.jobs.create(alice, "small-input", [("data", pending)], None)


async def test_an_asset_not_granted_answers_exactly_like_an_unknown_one(services: Services) -> None:
    alice = await _consumer(services, "alice", "dummy-job")
    messages = []
    for asset in ("other-job", "no-such-asset"):
        with pytest.raises(NotFoundError) as raised:
            await services.jobs.create(alice, asset, [], None)
        messages.append(_not_found_message(raised.value, asset))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("bindings", "says"),
    [
        ([("nope", "F")], "no input slot 'nope'"),
        ([("data", "F"), ("data", "F")], "given twice"),
        ([], "required input slots missing: data"),
    ],
)
async def test_input_bindings_must_match_the_assets_slots(
    services: Services, bindings: list[tuple[str, str]], says: str
) -> None:
    alice = await _consumer(services, "alice", "small-input")
    file_id = await _file(services, alice)
    with pytest.raises(ValidationError) as raised:
        await services.jobs.create(alice, "small-input", [(s, file_id) for s, _ in bindings], None)
    assert says in raised.value.message and raised.value.field == "inputs"


async def test_a_file_larger_than_its_slot_is_refused(services: Services) -> None:
    alice = await _consumer(services, "alice", "small-input")
    big = await _file(services, alice, size=1025)
    with pytest.raises(ValidationError, match="at most 1024"):
        await services.jobs.create(alice, "small-input", [("data", big)], None)


async def test_the_operator_cannot_run_jobs(services: Services) -> None:
    with pytest.raises(ValidationError, match="operator cannot run jobs"):
        await services.jobs.create(OPERATOR, "dummy-job", [], None)


async def test_unfinished_jobs_per_consumer_are_capped_and_refused_beyond(services: Services) -> None:
    alice = await _consumer(services, "alice", "dummy-job")
    bob = await _consumer(services, "bob", "dummy-job")
    for _ in range(MAX_QUEUED):
        await services.jobs.create(alice, "dummy-job", [], {"SLEEPTIME": 60})
    with pytest.raises(QuotaExceededError):
        await services.jobs.create(alice, "dummy-job", [], None)
    assert (await services.jobs.create(bob, "dummy-job", [], None)).consumer_id == bob.consumer_id


async def test_another_consumers_job_is_unknown_and_a_live_job_is_not_deleted(services: Services) -> None:
    alice = await _consumer(services, "alice", "dummy-job")
    bob = await _consumer(services, "bob", "dummy-job")
    job = await services.jobs.create(alice, "dummy-job", [], {"SLEEPTIME": 60})
    for call in (services.jobs.get, services.jobs.cancel, services.jobs.delete):
        with pytest.raises(NotFoundError):
            await call(bob, job.id)
    with pytest.raises(ConflictError):
        await services.jobs.delete(alice, job.id)
    await services.jobs.cancel(alice, job.id)
    for _ in range(600):  # the worker is stopped within the cancel timeout (10 s here; more under load)
        canceled = await services.jobs.get(alice, job.id)
        if canceled.state.terminal:
            break
        await asyncio.sleep(0.1)
    assert canceled.state == JobState.CANCELED
    assert (await services.jobs.cancel(alice, job.id)) == canceled  # cancelling again changes nothing
    assert (await services.jobs.delete(alice, job.id)).id == job.id
    with pytest.raises(NotFoundError):
        await services.jobs.get(alice, job.id)


async def test_concurrent_creates_cannot_overshoot_the_unfinished_jobs_quota(services: Services) -> None:
    alice = await _consumer(services, "alice", "dummy-job")

    results = await asyncio.gather(
        *(services.jobs.create(alice, "dummy-job", [], {"SLEEPTIME": 60}) for _ in range(10)),
        return_exceptions=True,
    )

    assert sum(not isinstance(r, BaseException) for r in results) == MAX_QUEUED
    assert all(isinstance(r, QuotaExceededError) for r in results if isinstance(r, BaseException))
