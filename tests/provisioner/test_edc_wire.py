"""The pieces of the EDC protocol that fail silently when wrong: policy dates, names, and the
connector stand-in's own checks (so the end-to-end tests can fail)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from core.errors import ValidationError
from core.policy import assignee, contract_end
from core.provisioning import ProvisionRequest, resource_name
from wml.client.connector import EDCTYPE, running_connector


def _constraint(left: str, op: str, right: str) -> dict[str, object]:
    return {
        "edctype": "AtomicConstraint",
        "leftExpression": {"value": left},
        "operator": op,
        "rightExpression": {"value": right},
    }


def test_contract_end_takes_the_earliest_before_constraint() -> None:
    policy = {
        "permissions": [
            {
                "constraints": [
                    _constraint("inForceDate", "LEQ", "2030-01-02T00:00:00Z"),
                    _constraint("edc:contractEndDate", "LT", "2030-01-01T00:00:00+00:00"),
                    _constraint("inForceDate", "GEQ", "2020-01-01T00:00:00Z"),  # a start, not an end
                    _constraint("spatial", "LEQ", "2029-01-01T00:00:00Z"),  # not a date operand
                ]
            }
        ]
    }
    assert contract_end(policy, AGREED) == datetime(2030, 1, 1, tzinfo=UTC)


AGREED = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("relative", "after"),
    [
        ("contractAgreement+30d", timedelta(days=30)),
        ("contractAgreement + 12h", timedelta(hours=12)),
        ("contractagreement+90m", timedelta(minutes=90)),
        ("contractAgreement+1s", timedelta(seconds=1)),
    ],
)
def test_a_relative_contract_end_counts_from_the_agreement(relative: str, after: timedelta) -> None:
    policy = {"permissions": [{"constraints": [_constraint("inForceDate", "LEQ", relative)]}]}
    assert contract_end(policy, AGREED) == AGREED + after


@pytest.mark.parametrize("unreadable", ["contractAgreement+30y", "next tuesday", "contractAgreement-1d", ""])
def test_an_end_that_cannot_be_read_is_refused_not_defaulted(unreadable: str) -> None:
    policy = {"permissions": [{"constraints": [_constraint("inForceDate", "LEQ", unreadable)]}]}
    with pytest.raises(ValueError, match="neither an ISO-8601 date-time nor contractAgreement"):
        contract_end(policy, AGREED)


def test_contract_end_is_none_without_end_constraints() -> None:
    assert contract_end({}, AGREED) is None
    assert contract_end(None, AGREED) is None


def test_assignee_is_read_and_blank_means_none() -> None:
    assert assignee({"assignee": " consumer-1 "}) == "consumer-1"
    assert assignee({"assignee": ""}) is None
    assert assignee({}) is None


def test_resource_names_are_vault_safe_and_distinct_for_similar_ids() -> None:
    a, b = resource_name("tp/1:x"), resource_name("tp-1-x")
    assert a != b
    for name in (a, b, resource_name("äöü")):
        assert name.replace("-", "").isalnum()
        assert name.isascii()


def test_a_request_without_required_fields_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        ProvisionRequest.parse({"assetId": "a", "transferProcessId": "t", "callbackAddress": "http://x"})
    assert caught.value.field == "resourceDefinitionId"
    with pytest.raises(ValidationError):
        ProvisionRequest.parse(
            {
                "assetId": "a",
                "transferProcessId": "t",
                "callbackAddress": "c",
                "resourceDefinitionId": "r",
                "type": "destroy",
            }
        )


GOOD = {
    "edctype": EDCTYPE,
    "resourceDefinitionId": "rd-1",
    "assetId": "a",
    "resourceName": "wml-tp-1",
    "contentDataAddress": {
        "properties": {"type": "HttpData", "baseUrl": "http://x", "authKey": "X-Api-Key", "authCode": "c"}
    },
    "apiKeyJwt": "j",
    "hasToken": True,
}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"edctype": None}, "edctype"),
        ({"resourceDefinitionId": "rd-other"}, "resourceDefinitionId"),
        ({"contentDataAddress": {"type": "HttpData", "baseUrl": "http://x"}}, "properties"),
        ({"resourceName": "wml_tp_1"}, "resourceName"),
        ({"apiKeyJwt": None}, "apiKeyJwt"),
    ],
)
async def test_the_connector_stand_in_refuses_what_the_connector_cannot_read(
    change: dict[str, object], why: str
) -> None:
    async with running_connector("key") as edc:
        edc.expected_rd["tp-1"] = "rd-1"
        body = {**GOOD, **change}
        async with httpx.AsyncClient() as http:
            resp = await http.post(
                f"{edc.callback_base}/api/management/callback/tp-1/provision",
                json=body,
                headers={"X-Api-Key": "key"},
            )
        assert resp.status_code == 400
        assert why in edc.refused[-1][1]


async def test_the_connector_stand_in_refuses_a_reused_resource_name_and_a_wrong_key() -> None:
    async with running_connector("key") as edc, httpx.AsyncClient() as http:
        edc.expected_rd.update({"tp-1": "rd-1", "tp-2": "rd-1"})
        base = f"{edc.callback_base}/api/management/callback"
        ok = await http.post(f"{base}/tp-1/provision", json=GOOD, headers={"X-Api-Key": "key"})
        assert ok.status_code == 204
        reused = await http.post(f"{base}/tp-2/provision", json=GOOD, headers={"X-Api-Key": "key"})
        assert reused.status_code == 400
        wrong = await http.post(f"{base}/tp-1/provision", json=GOOD, headers={"X-Api-Key": "nope"})
        assert wrong.status_code == 401
