"""EDC provisioning end to end: the real service and a connector stand-in talking over loopback HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from core.models import GrantState
from tests.support.api import Api, running_api
from wml.client.connector import DIALECTS, ConnectorEmulator, running_connector

EDC_KEY = "management-api-key"
FAST_CALLBACKS = {
    "callback_max_delay": 0.2,
    "callback_unauthorized_delay": 0.3,
    "reaper_interval": 0.2,
}


@pytest.fixture
async def connector() -> AsyncIterator[ConnectorEmulator]:
    async with running_connector(EDC_KEY) as emulator:
        yield emulator


@pytest.fixture
async def edc_api(tmp_path: Path, connector: ConnectorEmulator) -> AsyncIterator[Api]:
    settings = {**FAST_CALLBACKS, **connector.provisioner_settings()}
    async with running_api(tmp_path / "data", **settings) as running:
        yield running


async def _provision(
    api: Api, edc: ConnectorEmulator, tp: str, dialect: str = "0.11", **kw: object
) -> httpx.Response:
    body = edc.request_body("dummy-job", tp, kind="provision", dialect=dialect, **kw)  # type: ignore[arg-type]
    return await edc.post(edc.endpoint(api.url, "dummy-job", dialect), body)


async def _grant_in(api: Api, tp: str, state: GrantState) -> None:
    for _ in range(100):
        grant = await api.services.store.grants.grant_by_transfer(tp)
        if grant is not None and grant.state == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"grant of {tp} never became {state}")


async def _me(api: Api, token: str) -> httpx.Response:
    return await api.http.post(
        "/graphql",
        json={"query": "{ me { id name } assets { id } }"},
        headers={"Authorization": f"Bearer {token}"},
    )


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_provision_callback_details_and_a_query_with_the_token(
    edc_api: Api, connector: ConnectorEmulator, dialect: str
) -> None:
    resp = await _provision(edc_api, connector, "tp-1", dialect)
    assert resp.status_code == 200
    assert resp.json() == {}
    callback = await connector.wait_for_callback("tp-1")
    assert callback.address["type"] == "HttpData"
    assert callback.address["baseUrl"] == f"{edc_api.url}/provision/details/tp-1"
    if dialect != "0.16":  # the data plane's callback carries the data address only
        assert callback.body["assetId"] == "dummy-job"
    details = await connector.pull_details(callback)
    assert details["graphqlUrl"] == f"{edc_api.url}/graphql"
    assert details["websocketUrl"].startswith("ws://")
    assert details["assetId"] == "dummy-job"
    me = await _me(edc_api, details["token"])
    assert me.status_code == 200
    # The data plane's request names no participant: the flow is its own consumer.
    expected = "transfer tp-1" if dialect == "0.16" else connector.participant_id
    assert me.json()["data"]["me"]["name"] == expected
    assert me.json()["data"]["assets"] == [{"id": "dummy-job"}]
    assert details["token"].encode() not in (edc_api.services.settings.data_dir / "wml.db").read_bytes()


async def test_deprovision_revokes_the_token_and_cancels_running_jobs(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    await _provision(edc_api, connector, "tp-2")
    details = await connector.pull_details(await connector.wait_for_callback("tp-2"))
    token = details["token"]
    job = await edc_api.create_job(token, parameters={"SLEEPTIME": 60})
    await edc_api.wait_for(token, job["id"], {"RUNNING"})
    uploaded = await edc_api.upload(token, b"to be removed")

    body = connector.request_body("dummy-job", "tp-2", kind="deprovision")
    resp = await connector.post(f"{edc_api.url}/provision/", body)
    assert resp.status_code == 200

    assert (await _me(edc_api, token)).status_code == 401
    store = edc_api.services.store
    for _ in range(100):
        stored = await store.jobs.get_job(job["id"])
        if stored is not None and stored.state.terminal:
            break
        await asyncio.sleep(0.1)
    assert stored is not None
    assert stored.state == "CANCELED"
    assert stored.reason == "DEPROVISIONED"
    for _ in range(50):  # the reaper removes the files once no job can add any
        if await store.files.get_file(uploaded["id"]) is None:
            break
        await asyncio.sleep(0.1)
    assert await store.files.get_file(uploaded["id"]) is None
    again = await connector.post(f"{edc_api.url}/provision/", body)
    assert again.status_code == 200  # deprovisioning twice is fine
    unknown = connector.request_body("dummy-job", "never-provisioned", kind="deprovision")
    assert (await connector.post(f"{edc_api.url}/provision/", unknown)).status_code == 200


async def test_deprovisioning_one_grant_leaves_the_consumers_other_grants_working(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    await _provision(edc_api, connector, "tp-a")
    await _provision(edc_api, connector, "tp-b")
    token_a = (await connector.pull_details(await connector.wait_for_callback("tp-a")))["token"]
    token_b = (await connector.pull_details(await connector.wait_for_callback("tp-b")))["token"]
    await connector.post(
        f"{edc_api.url}/provision", connector.request_body("dummy-job", "tp-a", kind="deprovision")
    )
    assert (await _me(edc_api, token_a)).status_code == 401
    assert (await _me(edc_api, token_b)).status_code == 200


async def test_repeated_and_concurrent_requests_create_one_consumer_grant_and_token(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    body = connector.request_body("dummy-job", "tp-dup", kind="provision")
    answers = await asyncio.gather(*(connector.post(f"{edc_api.url}/provision/", body) for _ in range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert (await connector.post(f"{edc_api.url}/provision/", body)).status_code == 200
    await connector.wait_for_callback("tp-dup")
    await asyncio.sleep(0.5)  # room for any (wrong) second callback to arrive
    grants = [
        g for g in await edc_api.services.store.grants.list_grants() if g.transfer_process_id == "tp-dup"
    ]
    assert len(grants) == 1
    mine = [c for c in connector.accepted if c.transfer_process_id == "tp-dup"]
    assert len({c.address["authCode"] for c in mine}) == 1
    assert len({c.body["resourceName"] for c in mine}) == 1
    assert connector.refused == []
    consumers = {g.consumer_id for g in await edc_api.services.store.grants.list_grants()}
    assert len(consumers) == 1


async def test_an_untyped_repeat_for_a_provisioned_transfer_provisions_nothing(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    await _provision(edc_api, connector, "tp-m", "milestone")
    first = await connector.wait_for_callback("tp-m")
    repeat = connector.request_body("dummy-job", "tp-m", kind=None, dialect="milestone")
    connector.expected_rd["tp-m"] = first.body["resourceDefinitionId"]  # a deprovision in disguise
    assert (await connector.post(f"{edc_api.url}/provision/", repeat)).status_code == 200
    await asyncio.sleep(0.5)
    assert len([c for c in connector.accepted if c.transfer_process_id == "tp-m"]) == 1
    assert len(await edc_api.services.store.grants.list_grants()) == 1


async def test_callback_answered_409_then_204_completes(edc_api: Api, connector: ConnectorEmulator) -> None:
    connector.scripted = [409, 409]
    await _provision(edc_api, connector, "tp-busy")
    await connector.wait_for_callback("tp-busy")
    await _grant_in(edc_api, "tp-busy", GrantState.ACTIVE)
    grant = await edc_api.services.store.grants.grant_by_transfer("tp-busy")
    assert grant is not None
    assert grant.state == GrantState.ACTIVE
    assert grant.callback_attempts == 3


async def test_callback_401_leaves_failed_callback_and_an_actionable_log_line(
    edc_api: Api, connector: ConnectorEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    connector.scripted = [401, 401, 401, 401]
    await _provision(edc_api, connector, "tp-key")
    for _ in range(50):
        grant = await edc_api.services.store.grants.grant_by_transfer("tp-key")
        if grant is not None and grant.state == GrantState.FAILED_CALLBACK:
            break
        await asyncio.sleep(0.05)
    assert grant is not None
    assert grant.state == GrantState.FAILED_CALLBACK
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert "set WML_EDC_API_KEY" in logged
    assert EDC_KEY not in logged
    await connector.wait_for_callback("tp-key")  # retried slowly, and delivered once the key is accepted
    await _grant_in(edc_api, "tp-key", GrantState.ACTIVE)


async def test_callback_target_down_at_first_is_reached_after_it_comes_up(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    connector.down = True
    await _provision(edc_api, connector, "tp-down")
    await asyncio.sleep(1.0)
    assert connector.accepted == []
    connector.down = False
    await connector.wait_for_callback("tp-down")


async def test_a_pending_callback_is_delivered_after_our_service_restarts(
    tmp_path: Path, connector: ConnectorEmulator
) -> None:
    connector.down = True
    settings = {**FAST_CALLBACKS, **connector.provisioner_settings()}
    async with running_api(tmp_path / "data", **settings) as api:
        assert (await _provision(api, connector, "tp-restart")).status_code == 200
    connector.down = False
    async with running_api(tmp_path / "data", **settings):
        callback = await connector.wait_for_callback("tp-restart")
    assert callback.body["resourceDefinitionId"] == connector.expected_rd["tp-restart"]


async def test_a_grant_whose_contract_ends_is_deprovisioned_by_the_reaper(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    end = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    constraint = {
        "edctype": "AtomicConstraint",
        "leftExpression": {"value": "inForceDate"},
        "operator": "LEQ",
        "rightExpression": {"value": end},
    }
    await _provision(edc_api, connector, "tp-exp", constraints=[constraint])
    token = (await connector.pull_details(await connector.wait_for_callback("tp-exp")))["token"]
    assert (await _me(edc_api, token)).status_code == 200
    await asyncio.sleep(2.5)
    grant = await edc_api.services.store.grants.grant_by_transfer("tp-exp")
    assert grant is not None
    assert grant.state == GrantState.DEPROVISIONED
    assert (await _me(edc_api, token)).status_code == 401


async def test_details_refuse_missing_or_wrong_secret_and_unknown_or_deprovisioned_transfers(
    edc_api: Api, connector: ConnectorEmulator
) -> None:
    await _provision(edc_api, connector, "tp-d")
    callback = await connector.wait_for_callback("tp-d")
    url = callback.address["baseUrl"]
    assert (await edc_api.http.get(url)).status_code == 401
    assert (await edc_api.http.get(url, headers={"X-Api-Key": "wrong"})).status_code == 401
    unknown = await edc_api.http.get(f"{edc_api.url}/provision/details/nope", headers={"X-Api-Key": "x"})
    assert unknown.status_code == 401  # alike: tests/security/test_provisioning.py
    await connector.post(
        f"{edc_api.url}/provision/", connector.request_body("dummy-job", "tp-d", kind="deprovision")
    )
    gone = await edc_api.http.get(url, headers={"X-Api-Key": callback.address["authCode"]})
    assert gone.status_code == 401


async def test_unknown_asset_gets_a_4xx_with_a_json_error(edc_api: Api, connector: ConnectorEmulator) -> None:
    body = connector.request_body("no-such-asset", "tp-x", kind="provision")
    resp = await connector.post(f"{edc_api.url}/provision/", body)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "NOT_FOUND"


async def test_a_malformed_request_gets_400_not_a_crash(edc_api: Api, connector: ConnectorEmulator) -> None:
    secret = {"X-Provision-Secret": connector.provision_secret}
    resp = await edc_api.http.post("/provision/", content=b"{not json", headers=secret)
    assert resp.status_code == 400
    resp = await edc_api.http.post("/provision/", json={"assetId": "dummy-job"}, headers=secret)
    assert resp.status_code == 400
    assert "transferProcessId" in resp.json()["error"]["message"]


async def test_the_shared_secret_is_taken_from_the_header_or_the_query(
    tmp_path: Path, connector: ConnectorEmulator
) -> None:
    settings = {**connector.provisioner_settings(), "provision_secret": "s3cret"}  # not the connector's
    async with running_api(tmp_path / "data", **FAST_CALLBACKS, **settings) as api:
        body = connector.request_body("dummy-job", "tp-s", kind="provision")
        assert (await connector.post(f"{api.url}/provision/", body)).status_code == 401
        assert (await connector.post(f"{api.url}/provision/?secret=s3cret", body)).status_code == 200


async def test_operator_lists_grants_and_deprovisions_one(edc_api: Api, connector: ConnectorEmulator) -> None:
    await _provision(edc_api, connector, "tp-op")
    token = (await connector.pull_details(await connector.wait_for_callback("tp-op")))["token"]
    admin = "test-admin-token"
    await _grant_in(edc_api, "tp-op", GrantState.ACTIVE)
    listed = await edc_api.data("{ grants { id state transferProcessId callbackState } }", token=admin)
    [grant] = listed["grants"]
    assert grant["state"] == "ACTIVE"
    assert grant["callbackState"] == "DELIVERED"
    refused = await edc_api.data(
        "mutation($id: ID!) { deprovisionGrant(id: $id) { __typename } }", {"id": grant["id"]}, token=token
    )
    assert refused["deprovisionGrant"]["__typename"] == "PermissionDeniedError"
    done = await edc_api.data(
        "mutation($id: ID!) { deprovisionGrant(id: $id) { ... on Grant { state } } }",
        {"id": grant["id"]},
        token=admin,
    )
    assert done["deprovisionGrant"]["state"] == "DEPROVISIONED"
    assert (await _me(edc_api, token)).status_code == 401
