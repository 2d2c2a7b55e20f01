"""A stand-in for the provider's EDC connector, for ``wml demo`` and the tests.

It speaks to our provisioner exactly as the connector does (both request dialects, re-sending on 5xx
and network errors with a 30 s timeout) and receives the provisioning callback on a loopback port,
checking it the way the connector reads it: a missing ``edctype``, an address not wrapped in
``properties``, a ``resourceDefinitionId`` other than the one it sent, a ``resourceName`` another transfer
already used, or a wrong ``X-Api-Key`` are refused. It can be told to answer the next callbacks with
other statuses (409, 401, 5xx) first.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EDCTYPE = "dataspaceconnector:provisioner-callback-request"
# EDC's control-plane provision-http (0.11 to 0.15 with a request type, milestone-8 without), and from 0.14
# (the only one from 0.16) the data plane's ProvisionHttp.
DIALECTS = ("0.16", "0.11", "milestone")
NEWEST = DIALECTS[0]


@dataclass
class Callback:
    transfer_process_id: str
    body: dict[str, Any]

    @property
    def address(self) -> dict[str, Any]:
        """The data address sent to the connector (control plane) or the data plane (0.16)."""
        wrapper = self.body.get("contentDataAddress") or self.body["dataAddress"]
        properties: dict[str, Any] = wrapper["properties"]
        return properties


@dataclass
class ConnectorEmulator:
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    provision_secret: str = field(default_factory=lambda: secrets.token_urlsafe(16))  # sent to /provision
    participant_id: str = "consumer-participant"
    callback_base: str = ""
    accepted: list[Callback] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    scripted: list[int] = field(default_factory=list)  # statuses to answer first, in order
    expected_rd: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # resourceName -> transfer that used it
    down: bool = False  # answer nothing useful: close like a stopped server would (503 here)
    deprovisioned: list[str] = field(default_factory=list)  # flows the data plane heard were deprovisioned
    agreements: dict[str, tuple[str, str]] = field(default_factory=dict)  # transfer -> (agreement, consumer)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the callback receiver -------------------------------------------------------------------------

    async def _receive(self, request: Request) -> Response:
        tp = request.path_params["tp"]
        if self.down:
            return Response(status_code=503)
        if self.scripted:
            return Response(status_code=self.scripted.pop(0))
        if request.headers.get("x-api-key") != self.api_key:
            self.refused.append((401, "wrong X-Api-Key"))
            return Response(status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return self._refuse(400, "not JSON")
        problem = self._check(tp, body)
        if problem:
            return self._refuse(400, problem)
        self.names[body["resourceName"]] = tp
        self.accepted.append(Callback(transfer_process_id=tp, body=body))
        self._arrived.set()
        return Response(status_code=204)

    async def _management(self, request: Request) -> Response:
        """The management API's transfer processes and contract agreements (v3, JSON-LD compacted), as
        the provisioner reads them to find a transfer's participant."""
        if request.headers.get("x-api-key") != self.api_key:
            return Response(status_code=401)
        kind, ident = request.path_params["kind"], request.path_params["ident"]
        if kind == "transferprocesses" and ident in self.agreements:
            return JSONResponse({"@id": ident, "edc:contractId": self.agreements[ident][0]})
        for agreement, consumer in self.agreements.values():
            if kind == "contractagreements" and ident == agreement:
                return JSONResponse({"@id": agreement, "consumerId": consumer})
        return Response(status_code=404)

    async def _receive_dataplane(self, request: Request) -> Response:
        """The data plane's provisioning context (EDC 0.14+): ``/{flowId}/{resourceId}/provision`` with
        ``{"dataAddress": {...}}``, ``.../deprovision`` with no body; no key is checked."""
        flow, rid, action = (
            request.path_params["flow"],
            request.path_params["rid"],
            request.path_params["action"],
        )
        if self.down:
            return Response(status_code=503)
        if self.scripted:
            return Response(status_code=self.scripted.pop(0))
        if rid != self.expected_rd.get(flow):
            return self._refuse(404, "no such provision resource in this flow")
        if action == "deprovision":
            self.deprovisioned.append(flow)
            self._arrived.set()
            return Response(status_code=204)
        try:
            body = await request.json()
        except ValueError:
            return self._refuse(400, "not JSON")
        address = body.get("dataAddress") if isinstance(body, dict) else None
        props = address.get("properties") if isinstance(address, dict) else None
        if not isinstance(props, dict) or not all(
            isinstance(props.get(k), str) for k in ("type", "baseUrl", "authKey", "authCode")
        ):
            return self._refuse(400, "dataAddress.properties needs type, baseUrl, authKey and authCode")
        self.accepted.append(Callback(transfer_process_id=flow, body=body))
        self._arrived.set()
        return Response(status_code=204)

    def _refuse(self, status: int, why: str) -> Response:
        self.refused.append((status, why))
        self._arrived.set()
        return JSONResponse({"error": why}, status_code=status)

    def _check(self, tp: str, body: Any) -> str | None:
        if not isinstance(body, dict) or body.get("edctype") != EDCTYPE:
            return "missing or wrong edctype"
        if body.get("resourceDefinitionId") != self.expected_rd.get(tp):
            return "resourceDefinitionId does not match the request"
        name = body.get("resourceName")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9-]+", name):
            return "resourceName must be letters, digits and dashes"
        if self.names.get(name, tp) != tp:
            return "resourceName already used by another transfer"
        address = body.get("contentDataAddress")
        if not isinstance(address, dict) or not isinstance(address.get("properties"), dict):
            return "contentDataAddress must be wrapped in properties"
        props = address["properties"]
        for key in ("type", "baseUrl", "authKey", "authCode"):
            if not isinstance(props.get(key), str):
                return f"contentDataAddress.properties.{key} missing"
        if not isinstance(body.get("apiKeyJwt"), str):
            return "apiKeyJwt must be a string"
        return None

    async def wait_for_callback(self, tp: str, within: float = 30) -> Callback:
        async with asyncio.timeout(within):
            while True:
                found = [c for c in self.accepted if c.transfer_process_id == tp]
                if found:
                    return found[-1]
                self._arrived.clear()
                await self._arrived.wait()

    # -- requests to the provider ----------------------------------------------------------------------

    def endpoint(self, service_url: str, asset_id: str, dialect: str = NEWEST) -> str:
        """Where this connector posts: the provisioner entry of its configuration (control plane), or the
        ProvisionHttp data address's baseUrl of the asset (0.16: it carries the asset's id)."""
        if dialect == "0.16":
            return f"{service_url}/provision?asset={quote(asset_id, safe='')}"
        return f"{service_url}/provision/"

    def request_body(
        self,
        asset_id: str,
        tp: str,
        *,
        kind: str | None,
        dialect: str = "0.11",
        assignee: str | None = None,
        constraints: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A request as the connector of ``dialect`` sends it; for 0.16 ``tp`` is the flow id (and a
        deprovision reuses the provision resource id of the flow). The transfer's contract agreement (its
        consumer: ``assignee`` or this connector's participant) is kept for the management API."""
        self.agreements.setdefault(tp, (f"agreement-{tp}", assignee or self.participant_id))
        if dialect == "0.16":
            if kind is None:
                raise ValueError("the data plane always says provision or deprovision")
            rid = self.expected_rd.setdefault(tp, f"pr-{secrets.token_hex(6)}")
            return {
                "type": kind,
                "flowId": tp,
                "provisionResourceId": rid,
                "callbackAddress": f"{self.callback_base}/provisioning",
            }
        rd = f"rd-{secrets.token_hex(6)}"
        if kind != "deprovision":
            self.expected_rd[tp] = rd
        policy: dict[str, Any] = {
            "permissions": [
                {
                    "edctype": "dataspaceconnector:permission",
                    "action": {"type": "USE"},
                    "constraints": constraints or [],
                }
            ],
            "prohibitions": [],
            "obligations": [],
            "profiles": [],
            "extensibleProperties": {},
            "inheritsFrom": None,
            "assigner": "provider-id",
            "assignee": assignee or self.participant_id,
            "target": asset_id,
            "@type": {"@policytype": "set"},
        }
        body: dict[str, Any] = {
            "assetId": asset_id,
            "transferProcessId": tp,
            "policy": policy,
            "callbackAddress": f"{self.callback_base}/api/management/callback",
            "resourceDefinitionId": rd,
        }
        if dialect != "milestone" and kind is not None:
            body["type"] = kind
        return body

    async def post(self, endpoint: str, body: dict[str, Any], *, retries: int = 5) -> httpx.Response:
        """Send like the connector: 30 s timeout, re-send the same body on 5xx or network errors."""
        last: Exception | None = None
        async with httpx.AsyncClient(timeout=30) as http:
            for _ in range(retries + 1):
                try:
                    resp = await http.post(
                        endpoint, json=body, headers={"X-Provision-Secret": self.provision_secret}
                    )
                except httpx.TransportError as e:
                    last = e
                else:
                    if resp.status_code < 500:
                        return resp
                    last = RuntimeError(f"HTTP {resp.status_code}")
                await asyncio.sleep(0.2)
        raise RuntimeError(f"provisioner unreachable after retries: {last}")

    def provisioner_settings(self, *, management: bool = False) -> dict[str, Any]:
        """The settings a provisioner needs to take this connector's requests and call it back (and with
        ``management``, to ask its management API who a transfer's participant is)."""
        settings = {
            "edc_api_key": self.api_key,
            "provision_secret": self.provision_secret,
            "edc_callback_origins": self.callback_base,
        }
        if management:
            settings["edc_management_url"] = f"{self.callback_base}/api/management"
        return settings

    async def pull_details(self, callback: Callback) -> dict[str, Any]:
        """What the provider's data plane does when the consumer pulls: GET baseUrl with authKey/authCode."""
        props = callback.address
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.get(props["baseUrl"], headers={props["authKey"]: props["authCode"]})
        resp.raise_for_status()
        details: dict[str, Any] = resp.json()
        return details


@asynccontextmanager
async def running_connector(api_key: str | None = None) -> AsyncIterator[ConnectorEmulator]:
    """The emulator's callback receiver on a free loopback port."""
    emulator = ConnectorEmulator(api_key=api_key) if api_key else ConnectorEmulator()
    app = Starlette(
        routes=[
            Route("/api/management/callback/{tp:path}/provision", emulator._receive, methods=["POST"]),
            Route("/provisioning/{flow}/{rid}/{action:str}", emulator._receive_dataplane, methods=["POST"]),
            Route("/api/management/v3/{kind}/{ident}", emulator._management, methods=["GET"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    emulator.callback_base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110  (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
        yield emulator
    finally:
        server.should_exit = True
        await task
        sock.close()
