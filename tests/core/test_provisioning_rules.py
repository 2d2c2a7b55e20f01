"""The provisioning rules, without HTTP: what a connector's request must hold, that repeating it changes
nothing, that a consumer's token is never stored, and how failed callbacks are retried and abandoned."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.auth import hash_token
from core.errors import NotFoundError, PermissionDeniedError, ValidationError
from core.models import CallbackState, GrantState, utcnow
from core.provisioning import CallbackOutcome, ProvisionRequest, resource_name
from core.services import Services
from tests.support.services import running_services

REQUIRED = ("assetId", "transferProcessId", "callbackAddress", "resourceDefinitionId")


def _body(transfer: str = "tp-1", **changes: Any) -> dict[str, Any]:
    body = {
        "assetId": "dummy-job",
        "transferProcessId": transfer,
        "callbackAddress": "http://connector.test/api/callback",
        "resourceDefinitionId": "rd-1",
        "type": "provision",
    }
    return {**body, **changes}


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with running_services(tmp_path) as opened:
        yield opened


@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("value", [None, "", "   ", 7, ["x"]])
def test_a_request_without_each_required_string_is_refused_naming_it(missing: str, value: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        ProvisionRequest.parse(_body(**{missing: value}))
    assert raised.value.field == missing


@pytest.mark.parametrize("body", [None, [], "text", 3])
def test_a_request_that_is_not_an_object_is_refused(body: Any) -> None:
    with pytest.raises(ValidationError):
        ProvisionRequest.parse(body)


def test_an_unknown_request_type_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        ProvisionRequest.parse(_body(type="steal"))
    assert raised.value.field == "type"


@given(st.text(max_size=300))
def test_a_resource_name_is_a_safe_vault_key_unique_per_transfer(transfer: str) -> None:
    name = resource_name(transfer)
    assert re.fullmatch(r"wml-[A-Za-z0-9-]+", name) and len(name) <= 55
    assert resource_name(transfer + "x") != name


async def test_a_repeated_provision_request_returns_the_same_grant_and_adds_none(services: Services) -> None:
    provisioning = services.provisioning
    first = await provisioning.handle(ProvisionRequest.parse(_body()))
    again = await provisioning.handle(ProvisionRequest.parse(_body()))
    assert first is not None and again is not None and again.id == first.id
    grants = await services.store.grants.list_grants()
    assert [g.id for g in grants if g.transfer_process_id == "tp-1"] == [first.id]


async def test_a_request_for_an_unknown_asset_creates_nothing(services: Services) -> None:
    with pytest.raises(NotFoundError):
        await services.provisioning.handle(ProvisionRequest.parse(_body(assetId="no-such-asset")))
    assert await services.store.grants.list_grants() == []


async def test_deprovisioning_an_unknown_transfer_changes_nothing(services: Services) -> None:
    kept = await services.provisioning.handle(ProvisionRequest.parse(_body()))
    gone = ProvisionRequest.parse(_body("tp-unknown", type="deprovision"))
    assert await services.provisioning.handle(gone) is None
    assert kept is not None
    assert (await services.store.grants.get_grant(kept.id)) == kept


async def test_the_consumer_token_is_stored_only_as_its_hash(services: Services, tmp_path: Path) -> None:
    grant = await services.provisioning.handle(ProvisionRequest.parse(_body()))
    assert grant is not None
    token = services.provisioning.token_for(grant)
    assert (await services.store.grants.grant_by_token_hash(hash_token(token))) is not None
    database = b"".join(p.read_bytes() for p in tmp_path.glob("wml.db*"))
    assert database and token.encode() not in database


async def test_details_need_the_code_derived_for_that_grant(services: Services) -> None:
    grant = await services.provisioning.handle(ProvisionRequest.parse(_body()))
    assert grant is not None
    found = await services.provisioning.details("tp-1", services.provisioning.auth_code_for(grant))
    assert found.token == services.provisioning.token_for(grant)
    other = replace(grant, id="g_other")
    with pytest.raises((PermissionDeniedError, NotFoundError)):  # a code made for another grant
        await services.provisioning.details("tp-1", services.provisioning.auth_code_for(other))


async def test_failed_callbacks_back_off_within_the_cap_then_are_abandoned(services: Services) -> None:
    provisioning = services.provisioning
    grant = await provisioning.handle(ProvisionRequest.parse(_body()))
    assert grant is not None
    pauses = []
    for _ in range(12):
        before = utcnow()
        await provisioning.record_callback(grant, CallbackOutcome(error="503 from the connector"))
        grant = await services.store.grants.get_grant(grant.id)
        assert grant is not None and grant.callback_state == CallbackState.PENDING
        assert grant.callback_next_at is not None
        pauses.append(round((grant.callback_next_at - before).total_seconds(), 1))
    cap = services.settings.edc.callback_max_delay
    assert pauses == sorted(pauses) and pauses[0] < 2 and pauses[-1] <= cap + 1
    old = replace(
        grant, created_at=utcnow() - timedelta(seconds=services.settings.edc.callback_give_up_after + 1)
    )
    await provisioning.record_callback(old, CallbackOutcome(error="503 from the connector"))
    abandoned = await services.store.grants.get_grant(grant.id)
    assert abandoned is not None
    assert abandoned.callback_state == CallbackState.GAVE_UP and abandoned.state == GrantState.FAILED_CALLBACK


@pytest.mark.parametrize("field", REQUIRED)
@pytest.mark.parametrize("value", ["tp\x00x", "tp\ud800x"])
def test_a_request_field_with_nul_or_a_lone_surrogate_is_refused_naming_it(field: str, value: str) -> None:
    """Neither can be stored (PostgreSQL text refuses NUL, UTF-8 has no lone surrogate): 400, not 500."""
    with pytest.raises(ValidationError) as raised:
        ProvisionRequest.parse(_body(**{field: value}))
    assert raised.value.field == field
