"""The provisioning front door, attacked: what an anonymous caller or a forged provision request could do
before, and must not any more. Each test fails on the code that let it through.

Everything is real: the service over loopback HTTP, the connector emulator, and raw TCP servers standing
in for a slow connector and for the places a forged callback would reach.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.models import CallbackState, GrantState
from tests.support.api import Api, running_api
from wml.client.connector import ConnectorEmulator, running_connector

FAST = {"callback_max_delay": 0.2, "reaper_interval": 0.2}


class Listener:
    """A raw TCP server that records what reaches it and answers as told (or never)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            self.received.append(await reader.readuntil(b"\r\n\r\n"))
            if self.answer is None:
                await self._closing.wait()  # hold the connection: a connector that never answers
            else:
                writer.write(self.answer)
                await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        self._handlers.discard(task)

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._closing.set()
        self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def connector() -> AsyncIterator[ConnectorEmulator]:
    async with running_connector() as emulator:
        yield emulator


@pytest.fixture
async def api(tmp_path: Path, connector: ConnectorEmulator) -> AsyncIterator[Api]:
    async with running_api(tmp_path / "data", **FAST, **connector.provisioner_settings()) as running:
        yield running


async def _grants(api: Api) -> list[Any]:
    return await api.services.store.grants.list_grants()


@pytest.mark.parametrize(
    "settings",
    [{}, {"provision_secret": "set"}, {"edc_callback_origins": "http://127.0.0.1:9"}],
    ids=["nothing-configured", "no-origins", "no-secret"],
)
async def test_provisioning_is_closed_until_secret_and_origins_are_configured(
    tmp_path: Path, connector: ConnectorEmulator, settings: dict[str, str]
) -> None:
    async with running_api(tmp_path / "data", **FAST, **settings) as api:
        body = connector.request_body("dummy-job", "tp-anon", kind="provision")
        resp = await api.http.post("/provision", json=body, headers={"X-Provision-Secret": "set"})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "PROVISIONING_DISABLED"
        assert "WML_" in resp.json()["error"]["message"]
        await asyncio.sleep(0.5)
        assert await _grants(api) == []
    assert connector.accepted == [] and connector.refused == []


async def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(
    api: Api, connector: ConnectorEmulator
) -> None:
    body = connector.request_body("dummy-job", "tp-guess", kind="provision")
    for headers in (
        {},
        {"X-Provision-Secret": "guess"},
        {"X-Provision-Secret": connector.provision_secret[:-1]},
    ):
        assert (await api.http.post("/provision", json=body, headers=headers)).status_code == 401
    deprovision = connector.request_body("dummy-job", "tp-guess", kind="deprovision")
    assert (await api.http.post("/provision", json=deprovision)).status_code == 401
    assert await _grants(api) == []


def _forged(connector: ConnectorEmulator) -> list[str]:
    base = connector.callback_base  # http://127.0.0.1:PORT, the only allowed origin
    port = int(base.rsplit(":", 1)[1])
    return [
        f"{base}/api/management/callback?steal=",  # our path would become its query
        f"{base}/api/management/callback#",
        f"http://user@127.0.0.1:{port}/api/management/callback",
        f"http://127.0.0.1:{port}@169.254.169.254/latest/meta-data",
        f"http://127.0.0.1:{port + 1}/api/management/callback",
        f"https://127.0.0.1:{port}/api/management/callback",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:{port}/api".replace("{port}", str(port)),
        f"{base}/api/%2e%2e/%2e%2e/admin",
        f"{base}/api/%2fadmin",
        f"{base}\\@evil.test/",
        f"{base}/api/management/callback\r\nX-Injected: 1",
        "file:///etc/passwd",
    ]


async def test_a_callback_address_outside_the_connectors_origin_is_refused_before_anything_is_sent(
    api: Api, connector: ConnectorEmulator
) -> None:
    for n, address in enumerate(_forged(connector)):
        body = {
            **connector.request_body("dummy-job", f"tp-ssrf-{n}", kind="provision"),
            "callbackAddress": address,
        }
        resp = await connector.post(f"{api.url}/provision", body)
        assert resp.status_code == 400, address
        assert resp.json()["error"]["code"] == "VALIDATION"
    await asyncio.sleep(0.5)
    assert await _grants(api) == []
    assert connector.accepted == [] and connector.refused == []


async def test_a_redirecting_connector_is_not_followed_and_the_key_goes_nowhere_else(tmp_path: Path) -> None:
    async with Listener(None) as trap, running_connector() as emulator:
        redirect = f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {trap.url}/x\r\nContent-Length: 0\r\n\r\n"
        async with Listener(redirect.encode()) as redirector:
            settings = {**emulator.provisioner_settings(), "edc_callback_origins": redirector.url}
            async with running_api(tmp_path / "data", **FAST, **settings) as api:
                body = {
                    **emulator.request_body("dummy-job", "tp-redirect", kind="provision"),
                    "callbackAddress": f"{redirector.url}/api/management/callback",
                }
                assert (await emulator.post(f"{api.url}/provision", body)).status_code == 200
                for _ in range(100):
                    grant = await api.services.store.grants.grant_by_transfer("tp-redirect")
                    if grant is not None and grant.callback_state == CallbackState.GAVE_UP:
                        break
                    await asyncio.sleep(0.05)
                assert grant is not None and grant.state == GrantState.FAILED_CALLBACK
            assert len(redirector.received) == 1
    assert trap.received == []


async def test_a_connector_that_never_answers_does_not_hold_up_another_grants_callback(
    tmp_path: Path,
) -> None:
    async with Listener(None) as silent, running_connector() as emulator:
        settings = {
            **emulator.provisioner_settings(),
            "edc_callback_origins": f"{emulator.callback_base},{silent.url}",
            "callback_timeout": 60,
        }
        async with running_api(tmp_path / "data", **FAST, **settings) as api:
            stuck = {
                **emulator.request_body("dummy-job", "tp-stuck", kind="provision"),
                "callbackAddress": f"{silent.url}/api/management/callback",
            }
            assert (await emulator.post(f"{api.url}/provision", stuck)).status_code == 200
            for _ in range(100):  # its callback is being sent and hangs
                if silent.received:
                    break
                await asyncio.sleep(0.05)
            assert silent.received
            fine = emulator.request_body("dummy-job", "tp-fine", kind="provision")
            assert (await emulator.post(f"{api.url}/provision", fine)).status_code == 200
            await emulator.wait_for_callback("tp-fine", within=10)


async def test_a_deprovision_naming_another_asset_changes_nothing(
    api: Api, connector: ConnectorEmulator
) -> None:
    body = connector.request_body("dummy-job", "tp-mine", kind="provision")
    assert (await connector.post(f"{api.url}/provision", body)).status_code == 200
    await connector.wait_for_callback("tp-mine")
    other = connector.request_body("other-job", "tp-mine", kind="deprovision")
    assert (await connector.post(f"{api.url}/provision", other)).status_code == 200
    await asyncio.sleep(0.3)
    grant = await api.services.store.grants.grant_by_transfer("tp-mine")
    assert grant is not None and grant.state == GrantState.ACTIVE


async def test_details_answer_alike_for_an_unknown_transfer_and_a_wrong_code(
    api: Api, connector: ConnectorEmulator
) -> None:
    body = connector.request_body("dummy-job", "tp-known", kind="provision")
    assert (await connector.post(f"{api.url}/provision", body)).status_code == 200
    await connector.wait_for_callback("tp-known")
    answers = []
    for tp, code in (("tp-known", "wrong-code"), ("tp-unknown", "wrong-code"), ("tp-known", "")):
        resp = await api.http.get(f"/provision/details/{tp}", headers={"X-Api-Key": code})
        answers.append((resp.status_code, resp.json()))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 401


async def test_an_oversized_provision_body_is_refused_without_reading_it(
    api: Api, connector: ConnectorEmulator
) -> None:
    secret = {"X-Provision-Secret": connector.provision_secret}

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # 640 MB if it were read
            yield b"x" * 65536

    resp = await api.http.post("/provision", content=endless(), headers=secret)
    assert resp.status_code == 413
    assert isinstance(resp, httpx.Response)
