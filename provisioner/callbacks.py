"""Sending provisioning callbacks to the connector, and the background loops of the provisioner.

The sender works from state persisted on each grant (``callback_state``, ``callback_next_at``), so a
callback pending when the service stops is sent after it starts again. How each answer is treated:

| connector answer          | what we do                                                            |
|---------------------------|-----------------------------------------------------------------------|
| 2xx (204)                 | delivered; the grant is ACTIVE                                        |
| 401                       | FAILED_CALLBACK, a loud log line naming the setting; retried slowly   |
| 404                       | the connector does not know the transfer: give up, deprovision        |
| 400 / other 4xx           | our body was refused: give up, FAILED_CALLBACK, logged as an error    |
| 409, 5xx, network, timeout| retried with bounded exponential backoff                              |
| 3xx                       | redirects are not followed: give up, FAILED_CALLBACK                  |

A grant made through the data plane's ProvisionHttp (EDC 0.14+) is answered at
``{callbackAddress}/{flowId}/{provisionResourceId}/provision`` with ``{"dataAddress": ...}``, and once
deprovisioned at ``.../deprovision`` with no body; the data plane has no key of its own to check, and its
answers read: 2xx done, 500-504 retried, anything else final (given up).

A callback goes only to an address under ``WML_EDC_CALLBACK_ORIGINS`` (checked again here: a grant
stored before the origins were set, or under another setting, is abandoned without any request), and
with the connector's key only there. Callbacks are sent concurrently, at most
``WML_EDC_MAX_CONCURRENT_CALLBACKS`` at once, so a connector that answers slowly delays only its own.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import structlog

from core.metrics import Metrics
from core.models import DATAPLANE, Grant, GrantState, utcnow
from core.origins import callback_url, checked_base, dataplane_callback_url
from core.provisioning import CallbackOutcome, ProvisioningService
from core.settings import Settings
from core.waiting import cancel_and_wait, wait_set
from provisioner.participants import ManagementLookup
from provisioner.wire import callback_body, dataplane_callback_body

log = structlog.get_logger("wml.provisioner")


def classify(status: int) -> CallbackOutcome:
    if 200 <= status < 300:
        return CallbackOutcome(delivered=True)
    if 300 <= status < 400:
        return CallbackOutcome(give_up=True, error=f"{status}: the connector redirected; not followed")
    if status == 401:
        return CallbackOutcome(unauthorized=True, error="401 from the connector")
    if status == 404:
        return CallbackOutcome(unknown_transfer=True, error="404: the connector does not know this transfer")
    if status == 409 or status >= 500:
        return CallbackOutcome(error=f"{status} from the connector")
    return CallbackOutcome(give_up=True, error=f"{status}: the connector refused the callback body")


def classify_dataplane(status: int) -> CallbackOutcome:
    """The data plane's provisioning context (EDC 0.14+): 2xx done, 500-504 retry, anything else final."""
    if 200 <= status < 300:
        return CallbackOutcome(delivered=True)
    if 500 <= status <= 504:
        return CallbackOutcome(error=f"{status} from the data plane")
    return CallbackOutcome(give_up=True, error=f"{status}: the data plane refused the callback")


def _outcome_name(outcome: CallbackOutcome) -> str:
    if outcome.delivered:
        return "delivered"
    if outcome.unauthorized:
        return "unauthorized"
    if outcome.unknown_transfer:
        return "unknown_transfer"
    return "refused" if outcome.give_up else "retry"


class ProvisionerTasks:
    """The callback sender and the expiry reaper, owned by the app's lifespan."""

    def __init__(self, provisioning: ProvisioningService, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self._provisioning = provisioning
        self._settings = settings
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self._origins = settings.edc.origins()
        self._sending: dict[str, asyncio.Task[None]] = {}  # grant id -> its callback being sent
        self._slots = asyncio.Semaphore(settings.edc.max_concurrent_callbacks)

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=self._settings.edc.callback_timeout, follow_redirects=False)
        edc = self._settings.edc
        if edc.management_url:
            key = edc.api_key.get_secret_value() if edc.api_key else ""
            self._provisioning.participant_lookup = ManagementLookup(
                edc.management_url, key, self._http
            ).participant
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="provisioner-callbacks"),
            asyncio.create_task(self._reap_loop(), name="provisioner-reaper"),
        ]

    async def stop(self) -> None:
        for task in [*self._tasks, *self._sending.values()]:
            await cancel_and_wait(task)
        if self._http is not None:
            await self._http.aclose()

    async def _send_loop(self) -> None:
        while True:
            try:
                for grant in await self._provisioning.due_callbacks():
                    if grant.id not in self._sending:
                        self._sending[grant.id] = asyncio.create_task(self._send_one(grant))
                nxt = await self._provisioning.next_callback_at()
            except Exception:
                log.exception("callback pass failed; retrying shortly")
                nxt = utcnow() + timedelta(seconds=1)
            pause = 5.0 if nxt is None else max(0.05, min(5.0, (nxt - utcnow()).total_seconds()))
            await wait_set(self._wake, pause)
            self._wake.clear()

    async def _send_one(self, grant: Grant) -> None:
        try:
            async with self._slots:
                # Every replica sees the callback due; the one whose claim wins sends it.
                if await self._provisioning.claim_callback(grant, self._settings.edc.callback_timeout + 5):
                    await self.send(grant)
        except Exception:
            log.exception("sending a provisioning callback failed", grant_id=grant.id)
        finally:
            self._sending.pop(grant.id, None)
            self._wake.set()  # its next attempt may be due sooner than the loop's pause

    async def send(self, grant: Grant) -> None:
        assert self._http is not None
        assert grant.callback_address is not None and grant.transfer_process_id is not None
        base = checked_base(grant.callback_address, self._origins)
        if base is None:
            log.error(
                "provisioning callback abandoned: its address is not under WML_EDC_CALLBACK_ORIGINS",
                grant_id=grant.id,
                transfer_process_id=grant.transfer_process_id,
            )
            outcome = CallbackOutcome(
                give_up=True, error="callback address not under WML_EDC_CALLBACK_ORIGINS"
            )
            await self._provisioning.record_callback(grant, outcome)
            return
        auth_code = self._provisioning.auth_code_for(grant)
        public_url = self._settings.resolved_public_url()
        key = self._settings.edc.api_key.get_secret_value() if self._settings.edc.api_key else ""
        try:
            if grant.dialect == DATAPLANE:
                assert grant.resource_definition_id is not None
                if grant.state == GrantState.DEPROVISIONED:
                    url = dataplane_callback_url(
                        base, grant.transfer_process_id, grant.resource_definition_id, "deprovision"
                    )
                    resp = await self._http.post(url)
                else:
                    url = dataplane_callback_url(
                        base, grant.transfer_process_id, grant.resource_definition_id, "provision"
                    )
                    resp = await self._http.post(
                        url, json=dataplane_callback_body(grant, public_url, auth_code)
                    )
                outcome = classify_dataplane(resp.status_code)
            else:
                url = callback_url(base, grant.transfer_process_id)
                body = callback_body(grant, public_url, auth_code)
                resp = await self._http.post(url, json=body, headers={"X-Api-Key": key})
                outcome = classify(resp.status_code)
        except httpx.HTTPError as e:
            outcome = CallbackOutcome(error=f"connector unreachable: {type(e).__name__}")
        if outcome.unauthorized:
            log.error(
                "the connector refused our provisioning callback (401): set WML_EDC_API_KEY to the "
                "connector's management API key (and give the connector a fixed key); retrying slowly",
                grant_id=grant.id,
                transfer_process_id=grant.transfer_process_id,
                key_set=bool(key),
            )
        elif not outcome.delivered:
            log.warning(
                "provisioning callback failed",
                grant_id=grant.id,
                error=outcome.error,
                attempt=grant.callback_attempts + 1,
            )
        self._metrics.callbacks.labels(_outcome_name(outcome)).inc()
        await self._provisioning.record_callback(grant, outcome)

    async def _reap_loop(self) -> None:
        while True:
            try:
                await self._provisioning.reap()
            except Exception:
                log.exception("grant reaper pass failed")
            await asyncio.sleep(self._settings.edc.reaper_interval)
