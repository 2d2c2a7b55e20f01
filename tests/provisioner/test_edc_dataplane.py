"""EDC 0.16+: the data plane's ProvisionHttp protocol against the real service, with a fake data plane
(the connector stand-in's 0.16 side: it posts ``{type, flowId, provisionResourceId, callbackAddress}`` to
the asset's ProvisionHttp baseUrl and receives ``/{flowId}/{resourceId}/provision|deprovision``). And the
callback answers every dialect must survive: 400 (final), 404, and the give-up after
WML_EDC_CALLBACK_GIVE_UP_AFTER; and relative contract ends (``contractAgreement+3s``: long enough to start
a job before the grant ends)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from core.models import CallbackState, GrantState
from tests.support.api import Api, running_api
from wml.client.connector import DIALECTS, ConnectorEmulator, running_connector

FAST = {"callback_max_delay": 0.2, "callback_unauthorized_delay": 0.3, "reaper_interval": 0.2}


@pytest.fixture
async def connector() -> AsyncIterator[ConnectorEmulator]:
    async with running_connector("management-api-key") as emulator:
        yield emulator


@pytest.fixture
async def api(tmp_path: Path, connector: ConnectorEmulator) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "data", **FAST, **connector.provisioner_settings()) as running:
        yield running


async def provision(api: Api, edc: ConnectorEmulator, flow: str, dialect: str = "0.16", **kw: object) -> int:
    body = edc.request_body("dummy-job", flow, kind="provision", dialect=dialect, **kw)  # type: ignore[arg-type]
    return (await edc.post(edc.endpoint(api.url, "dummy-job", dialect), body)).status_code


async def grant_of(api: Api, flow: str, *, until: object = None, within: float = 10.0):  # type: ignore[no-untyped-def]
    """The flow's grant, once ``until(grant)`` holds (or as it is, without a condition)."""
    async with asyncio.timeout(within):
        while True:
            grant = await api.services.store.grants.grant_by_transfer(flow)
            if grant is not None and (until is None or until(grant)):  # type: ignore[operator]
                return grant
            await asyncio.sleep(0.05)


async def me(api: Api, token: str) -> int:
    resp = await api.http.post(
        "/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": f"Bearer {token}"}
    )
    return resp.status_code


async def test_the_data_plane_provisions_reads_the_token_and_deprovisions(
    api: Api, connector: ConnectorEmulator
) -> None:
    assert await provision(api, connector, "flow-1") == 200
    callback = await connector.wait_for_callback("flow-1")
    assert callback.address["baseUrl"] == f"{api.url}/provision/details/flow-1"
    token = (await connector.pull_details(callback))["token"]
    assert await me(api, token) == 200
    grant = await grant_of(api, "flow-1", until=lambda g: g.state == GrantState.ACTIVE)
    assert grant.resource_definition_id == connector.expected_rd["flow-1"]

    assert await provision(api, connector, "flow-1") == 200  # the same request again: nothing new
    await asyncio.sleep(0.5)
    assert [c.transfer_process_id for c in connector.accepted] == ["flow-1"]
    assert len(await api.services.store.grants.list_grants()) == 1

    body = connector.request_body("dummy-job", "flow-1", kind="deprovision", dialect="0.16")
    assert (await connector.post(connector.endpoint(api.url, "dummy-job"), body)).status_code == 200
    async with asyncio.timeout(10):
        while connector.deprovisioned != ["flow-1"]:
            await asyncio.sleep(0.05)
    assert await me(api, token) == 401
    ended = await grant_of(api, "flow-1")
    assert (ended.state, ended.callback_state) == (GrantState.DEPROVISIONED, CallbackState.DELIVERED)


async def test_a_5xx_callback_is_retried_and_a_400_is_final(api: Api, connector: ConnectorEmulator) -> None:
    connector.scripted = [503, 500]
    assert await provision(api, connector, "flow-retry") == 200
    await connector.wait_for_callback("flow-retry")
    retried = await grant_of(api, "flow-retry", until=lambda g: g.state == GrantState.ACTIVE)
    assert retried.callback_attempts == 3

    connector.scripted = [400]
    assert await provision(api, connector, "flow-refused") == 200
    refused = await grant_of(api, "flow-refused", until=lambda g: g.callback_state == CallbackState.GAVE_UP)
    assert refused.state == GrantState.FAILED_CALLBACK
    assert "400" in (refused.callback_error or "")
    await asyncio.sleep(0.5)
    assert "flow-refused" not in [c.transfer_process_id for c in connector.accepted]  # never sent again


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"type": "provision", "flowId": "f", "callbackAddress": "http://x"}, "provisionResourceId"),
        ({"type": "maybe", "flowId": "f", "provisionResourceId": "r", "callbackAddress": "http://x"}, "type"),
        (
            {"type": "provision", "flowId": "", "provisionResourceId": "r", "callbackAddress": "http://x"},
            "flowId",
        ),
    ],
)
async def test_a_bad_data_plane_request_gets_a_400_naming_the_field(
    api: Api, connector: ConnectorEmulator, body: dict[str, str], says: str
) -> None:
    resp = await connector.post(connector.endpoint(api.url, "dummy-job"), body)
    assert resp.status_code == 400
    assert says in resp.json()["error"]["message"]
    assert await api.services.store.grants.list_grants() == []


async def test_a_data_plane_request_to_a_base_url_without_the_asset_is_refused(
    api: Api, connector: ConnectorEmulator
) -> None:
    body = connector.request_body("dummy-job", "flow-x", kind="provision", dialect="0.16")
    resp = await connector.post(f"{api.url}/provision", body)
    assert resp.status_code == 400
    assert "?asset=<asset id>" in resp.json()["error"]["message"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_400_callback_is_given_up_in_every_dialect(
    api: Api, connector: ConnectorEmulator, dialect: str
) -> None:
    connector.scripted = [400]
    assert await provision(api, connector, f"tp-400-{dialect}", dialect) == 200
    grant = await grant_of(
        api, f"tp-400-{dialect}", until=lambda g: g.callback_state == CallbackState.GAVE_UP
    )
    assert grant.state == GrantState.FAILED_CALLBACK
    assert grant.callback_attempts == 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_404_callback_in_every_dialect(api: Api, connector: ConnectorEmulator, dialect: str) -> None:
    """The control plane does not know the transfer: the grant is deprovisioned. The data plane's 404 is
    final like its other 4xx: given up."""
    connector.scripted = [404]
    assert await provision(api, connector, f"tp-404-{dialect}", dialect) == 200
    grant = await grant_of(
        api, f"tp-404-{dialect}", until=lambda g: g.callback_state == CallbackState.GAVE_UP
    )
    expected = GrantState.FAILED_CALLBACK if dialect == "0.16" else GrantState.DEPROVISIONED
    assert (grant.state, grant.callback_attempts) == (expected, 1)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_callback_that_never_gets_through_is_given_up_after_the_setting(
    tmp_path: Path, connector: ConnectorEmulator, dialect: str
) -> None:
    connector.down = True  # 503 to everything: retried, until WML_EDC_CALLBACK_GIVE_UP_AFTER
    settings = {**FAST, **connector.provisioner_settings(), "callback_give_up_after": 1.5}
    async with running_api(tmp_path / "data", **settings) as api:
        assert await provision(api, connector, f"tp-late-{dialect}", dialect) == 200
        grant = await grant_of(
            api, f"tp-late-{dialect}", until=lambda g: g.callback_state == CallbackState.GAVE_UP
        )
    assert grant.state == GrantState.FAILED_CALLBACK
    assert grant.callback_attempts > 1
    assert "503" in (grant.callback_error or "")


@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d != "0.16"])  # 0.16 requests carry no policy
async def test_a_relative_contract_end_ends_the_grant_and_cancels_its_jobs(
    api: Api, connector: ConnectorEmulator, dialect: str
) -> None:
    constraint = {
        "edctype": "AtomicConstraint",
        "leftExpression": {"value": "inForceDate"},
        "operator": "LEQ",
        "rightExpression": {"value": "contractAgreement+3s"},  # time to start a job first
    }
    tp = f"tp-rel-{dialect}"
    assert await provision(api, connector, tp, dialect, constraints=[constraint]) == 200
    token = (await connector.pull_details(await connector.wait_for_callback(tp)))["token"]
    job = await api.create_job(token, parameters={"SLEEPTIME": 60})
    assert job["__typename"] == "Job", job

    ended = await grant_of(api, tp, until=lambda g: g.state == GrantState.DEPROVISIONED, within=15)
    assert ended.expires_at is not None and ended.expires_at - ended.created_at < timedelta(seconds=5)
    assert await me(api, token) == 401  # the consumer's token ended with the grant
    async with asyncio.timeout(30):  # and its job is cancelled (read as the operator would)
        while (
            found := await api.services.store.jobs.get_job(job["id"])
        ) is None or found.state != "CANCELED":
            await asyncio.sleep(0.1)


async def test_an_unreadable_contract_end_is_refused_not_defaulted(
    api: Api, connector: ConnectorEmulator
) -> None:
    constraint = {
        "edctype": "AtomicConstraint",
        "leftExpression": {"value": "inForceDate"},
        "operator": "LEQ",
        "rightExpression": {"value": "contractAgreement+30 years"},
    }
    body = connector.request_body("dummy-job", "tp-bad-end", kind="provision", constraints=[constraint])
    resp = await connector.post(connector.endpoint(api.url, "dummy-job", "0.11"), body)
    assert resp.status_code == 400
    assert "contractAgreement+<n>s|m|h|d" in resp.json()["error"]["message"]
    assert await api.services.store.grants.list_grants() == []


@pytest.mark.parametrize("management", [True, False])
async def test_with_the_management_api_one_participant_keeps_one_consumer(
    tmp_path: Path, connector: ConnectorEmulator, management: bool
) -> None:
    settings = {**FAST, **connector.provisioner_settings(management=management)}
    async with running_api(tmp_path / "data", **settings) as api:
        for flow in ("flow-a", "flow-b"):  # the data plane names no participant
            assert await provision(api, connector, flow) == 200
        a, b = [await grant_of(api, f) for f in ("flow-a", "flow-b")]
        names = {
            c: (await api.services.store.grants.get_consumer(c)).name for c in {a.consumer_id, b.consumer_id}
        }  # type: ignore[union-attr]
    if management:  # asked of the connector: the same participant, so the same consumer
        assert list(names.values()) == [connector.participant_id]
    else:  # each flow its own consumer
        assert sorted(names.values()) == ["transfer flow-a", "transfer flow-b"]


async def test_a_management_api_that_refuses_leaves_the_transfer_its_own_consumer(
    tmp_path: Path, connector: ConnectorEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {**FAST, **connector.provisioner_settings(management=True), "edc_api_key": "not-the-key"}
    async with running_api(tmp_path / "data", **settings) as api:
        assert await provision(api, connector, "flow-401") == 200  # the lookup is refused (401)
        grant = await grant_of(api, "flow-401")
        consumer = await api.services.store.grants.get_consumer(grant.consumer_id)
    assert consumer is not None and consumer.name == "transfer flow-401"
    logged = capsys.readouterr()
    assert "did not name the transfer's participant" in logged.out + logged.err
    assert "not-the-key" not in logged.out + logged.err
