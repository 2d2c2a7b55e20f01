"""Provisioning grants for EDC transfers: the rules behind the connector's HTTP provisioner.

A provision request creates (once per transfer process, however often it is repeated) a consumer for the
policy's assignee and an ACTIVE-to-be grant for the asset, whose API token and details secret are
re-derivable from the server key (so neither is stored in clear). The callback to the connector is
persisted as state on the grant and driven by the provisioner's sender, which survives restarts.
Deprovisioning (a request, an operator, or expiry) revokes the token at once, cancels the grant's jobs
and removes its files per the retention setting. The wire format lives in ``provisioner``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError

from backends.backoff import backoff
from core.auth import hash_token
from core.errors import NotFoundError, PermissionDeniedError, ValidationError
from core.files import FileService
from core.live.bus import EventBus
from core.models import DATAPLANE, CallbackState, Consumer, Grant, GrantState, new_id, utcnow
from core.policy import assignee, contract_end
from core.store import Store
from core.supervisor import Supervisor

log = structlog.get_logger("wml.provisioning")


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    asset_id: str
    transfer_process_id: str
    callback_address: str
    resource_definition_id: str
    kind: str | None  # "provision", "deprovision", or None (milestone dialect: cannot tell)
    policy: dict[str, Any]
    dialect: str | None = None  # None: the control plane's provision-http; DATAPLANE: ProvisionHttp

    @classmethod
    def parse(cls, body: Any, asset: str | None = None) -> ProvisionRequest:
        """A request of any of the three dialects, told apart by its shape: the data plane's (EDC 0.14+)
        carries ``flowId`` and ``provisionResourceId`` and names no asset (``asset``: the ``?asset=`` of the
        ProvisionHttp baseUrl it was posted to); the control plane's carry ``assetId``, ``transferProcessId``
        and a policy, with (0.11) or without (milestone-8) a ``type``."""
        if not isinstance(body, dict):
            raise ValidationError("the request body must be a JSON object")
        if "flowId" in body or "provisionResourceId" in body:
            return cls._parse_dataplane(body, asset)
        fields = {}
        for name in ("assetId", "transferProcessId", "callbackAddress", "resourceDefinitionId"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{name} is required and must be a non-empty string", field=name)
            if not _is_storable_text(value):
                raise ValidationError(f"{name} must not contain NUL or lone surrogates", field=name)
            fields[name] = value.strip()
        kind = body.get("type")
        if kind is not None and kind not in ("provision", "deprovision"):
            raise ValidationError("type must be 'provision' or 'deprovision'", field="type")
        policy = body.get("policy")
        try:
            contract_end(policy if isinstance(policy, dict) else {}, utcnow())  # refuse what cannot be read
        except ValueError as e:
            raise ValidationError(str(e), field="policy") from None
        return cls(
            asset_id=fields["assetId"],
            transfer_process_id=fields["transferProcessId"],
            callback_address=fields["callbackAddress"],
            resource_definition_id=fields["resourceDefinitionId"],
            kind=kind,
            policy=policy if isinstance(policy, dict) else {},
        )

    @classmethod
    def _parse_dataplane(cls, body: dict[str, Any], asset: str | None) -> ProvisionRequest:
        fields = {}
        for name in ("flowId", "provisionResourceId", "callbackAddress"):
            value = body.get(name)
            if not isinstance(value, str) or not value.strip() or not _is_storable_text(value):
                raise ValidationError(f"{name} is required and must be a non-empty string", field=name)
            fields[name] = value.strip()
        kind = body.get("type")
        if kind not in ("provision", "deprovision"):
            raise ValidationError("type must be 'provision' or 'deprovision'", field="type")
        if not asset or not _is_storable_text(asset):
            raise ValidationError(
                "the data plane names no asset: give the asset's ProvisionHttp data address a baseUrl "
                "ending in ?asset=<asset id>",
                field="asset",
            )
        return cls(
            asset_id=asset,
            transfer_process_id=fields["flowId"],
            callback_address=fields["callbackAddress"],
            resource_definition_id=fields["provisionResourceId"],
            kind=kind,
            policy={},
            dialect=DATAPLANE,
        )


@dataclass(frozen=True, slots=True)
class Details:
    grant: Grant
    token: str


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    delivered: bool = False
    unauthorized: bool = False
    give_up: bool = False
    unknown_transfer: bool = False
    error: str | None = None


def _is_storable_text(value: str) -> bool:
    """No NUL (PostgreSQL text cannot hold it) and no lone surrogate (JSON's "\\ud800"; no UTF-8 for it)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def resource_name(transfer_process_id: str) -> str:
    """Letters, digits and dashes only (the connector uses it as a vault key), unique per transfer."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", transfer_process_id).strip("-")[:40]
    digest = hashlib.sha256(transfer_process_id.encode()).hexdigest()[:10]
    return f"wml-{readable}-{digest}" if readable else f"wml-{digest}"


class ProvisioningService:
    def __init__(
        self,
        store: Store,
        supervisor: Supervisor,
        files: FileService,
        bus: EventBus,
        secret_key: bytes,
        *,
        default_lifetime: int,
        retention: str,
        retry_max_delay: float,
        unauthorized_delay: float,
        give_up_after: float,
    ) -> None:
        self._store = store
        self._supervisor = supervisor
        self._files = files
        self._bus = bus
        self._key = secret_key
        self._lifetime = default_lifetime
        self._retention = retention
        self._max_delay = retry_max_delay
        self._unauthorized_delay = unauthorized_delay
        self._give_up_after = give_up_after
        self._lock = asyncio.Lock()
        # Who a transfer's participant is when its request names none (the connector's management API,
        # provisioner.participants); set by the provisioner when WML_EDC_MANAGEMENT_URL is.
        self.participant_lookup: Callable[[str], Awaitable[str | None]] | None = None

    # -- secrets derived from the server key -----------------------------------------------------------

    def _derive(self, purpose: str, grant: Grant) -> str:
        msg = f"{purpose}\n{grant.id}\n{grant.secret_salt}".encode()
        return (
            base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()).decode().rstrip("=")
        )

    def token_for(self, grant: Grant) -> str:
        return "wml_" + self._derive("token", grant)

    def auth_code_for(self, grant: Grant) -> str:
        return self._derive("details", grant)

    # -- requests from the connector -------------------------------------------------------------------

    async def handle(self, request: ProvisionRequest) -> Grant | None:
        """Apply a provision or deprovision request; safe to repeat. Returns the transfer's grant."""
        if request.kind == "deprovision":
            found = await self._store.grants.grant_by_transfer(request.transfer_process_id)
            if found is not None and found.asset_id == request.asset_id:  # else: as for an unknown one
                await self.deprovision_grant(found.id, "deprovisioned by the connector")
                if found.dialect == DATAPLANE:  # the data plane waits for a deprovisioned callback
                    await self._store.grants.update_grant(
                        found.id,
                        callback_state=CallbackState.PENDING.value,
                        callback_next_at=utcnow(),
                        callback_attempts=0,
                        callback_error=None,
                    )
                    return await self._store.grants.get_grant(found.id)
            return None
        if await self._store.assets.get_asset(request.asset_id) is None:
            raise NotFoundError("asset", request.asset_id)
        async with self._lock:  # one replica's concurrent duplicates; the unique key covers the rest
            existing = await self._store.grants.grant_by_transfer(request.transfer_process_id)
            if existing is None:
                existing = await self._create(request)
            elif (
                request.kind == "provision"
                and request.resource_definition_id != existing.resource_definition_id
            ):
                existing = await self._reprovision(existing, request)
        return existing

    async def _create(self, request: ProvisionRequest) -> Grant:
        consumer = await self._consumer_for(request)
        now = utcnow()
        end = contract_end(request.policy, now)  # a relative end counts from now: the agreement is new
        grant = Grant(
            id=new_id("g"),
            consumer_id=consumer.id,
            asset_id=request.asset_id,
            state=GrantState.PROVISIONING,
            created_at=now,
            expires_at=end or now + timedelta(seconds=self._lifetime),
            transfer_process_id=request.transfer_process_id,
            resource_definition_id=request.resource_definition_id,
            callback_address=request.callback_address.rstrip("/"),
            secret_salt=secrets.token_hex(16),
            callback_state=CallbackState.PENDING,
            # A safety net: the provisioner brings this forward once its reply has gone out, and a
            # restart in between still sends the callback.
            callback_next_at=now + timedelta(seconds=2),
            dialect=request.dialect,
        )
        inserted = await self._store.grants.insert_grant(
            grant, hash_token(self.token_for(grant)), request.policy
        )
        if not inserted:  # another replica won the race for this transfer
            found = await self._store.grants.grant_by_transfer(request.transfer_process_id)
            assert found is not None
            return found
        log.info(
            "grant provisioned",
            grant_id=grant.id,
            consumer_id=consumer.id,
            asset_id=grant.asset_id,
            transfer_process_id=grant.transfer_process_id,
            expires_at=grant.expires_at.isoformat() if grant.expires_at else None,
        )
        return grant

    async def _reprovision(self, grant: Grant, request: ProvisionRequest) -> Grant:
        """A new provisioning round for a known transfer: answer it with a callback echoing its id."""
        if grant.state == GrantState.DEPROVISIONED:
            log.warning(
                "provision request for a deprovisioned transfer ignored",
                transfer_process_id=grant.transfer_process_id,
            )
            return grant
        await self._store.grants.update_grant(
            grant.id,
            resource_definition_id=request.resource_definition_id,
            callback_state=CallbackState.PENDING.value,
            callback_next_at=utcnow() + timedelta(seconds=2),
            callback_attempts=0,
            callback_error=None,
        )
        return await self._store.grants.get_grant(grant.id) or grant

    async def _consumer_for(self, request: ProvisionRequest) -> Consumer:
        participant = assignee(request.policy)
        if participant is None and self.participant_lookup is not None:
            try:
                participant = await self.participant_lookup(request.transfer_process_id)
            except Exception as e:  # the connector's API is a courtesy here: never fail the request on it
                log.warning(
                    "the connector's management API did not name the transfer's participant",
                    transfer_process_id=request.transfer_process_id,
                    error=str(e)[:300],
                )
        if participant is None:  # no participant known: the transfer is its own consumer
            return await self._store.grants.create_consumer(
                new_id("c"), f"transfer {request.transfer_process_id}"[:200]
            )
        found = await self._store.grants.consumer_by_participant(participant)
        if found is not None:
            return found
        try:
            return await self._store.grants.create_consumer(
                new_id("c"), participant[:200], participant_id=participant
            )
        except IntegrityError:
            again = await self._store.grants.consumer_by_participant(participant)
            assert again is not None
            return again

    async def release_callback(self, grant_id: str) -> None:
        """The reply to the provision request has gone out: the callback may be sent now."""
        grant = await self._store.grants.get_grant(grant_id)
        if (
            grant is not None
            and grant.callback_state == CallbackState.PENDING
            and grant.callback_attempts == 0
        ):
            await self._store.grants.update_grant(grant_id, callback_next_at=utcnow())

    # -- the callback's life ---------------------------------------------------------------------------

    async def due_callbacks(self) -> list[Grant]:
        return await self._store.grants.grants_with_callback_due(utcnow())

    async def claim_callback(self, grant: Grant, attempt_takes: float) -> bool:
        """Claim ``grant``'s due callback for this replica's attempt (replicas race for it: one wins); an
        attempt cut short by the replica's death is retried after ``attempt_takes`` seconds."""
        now = utcnow()
        return await self._store.grants.claim_callback(grant.id, now, now + timedelta(seconds=attempt_takes))

    async def next_callback_at(self) -> datetime | None:
        return await self._store.grants.next_callback_at()

    async def record_callback(self, grant: Grant, outcome: CallbackOutcome) -> None:
        attempts = grant.callback_attempts + 1
        now = utcnow()
        if outcome.delivered:
            state = GrantState.ACTIVE if grant.state != GrantState.DEPROVISIONED else grant.state
            await self._store.grants.update_grant(
                grant.id,
                state=state.value,
                callback_state=CallbackState.DELIVERED.value,
                callback_attempts=attempts,
                callback_next_at=None,
                callback_error=None,
            )
            log.info("provisioning callback delivered", grant_id=grant.id, attempts=attempts)
            return
        if outcome.unknown_transfer:
            await self._store.grants.update_grant(
                grant.id,
                callback_state=CallbackState.GAVE_UP.value,
                callback_attempts=attempts,
                callback_error=outcome.error,
            )
            await self.deprovision_grant(grant.id, "the connector does not know this transfer")
            return
        if outcome.unauthorized:
            await self._store.grants.update_grant(
                grant.id,
                state=GrantState.FAILED_CALLBACK.value,
                callback_state=CallbackState.UNAUTHORIZED.value,
                callback_attempts=attempts,
                callback_error=outcome.error,
                callback_next_at=now + timedelta(seconds=self._unauthorized_delay),
            )
            return
        if outcome.give_up or (now - grant.created_at).total_seconds() > self._give_up_after:
            ended = grant.state == GrantState.DEPROVISIONED  # (a data plane's deprovision callback)
            await self._store.grants.update_grant(
                grant.id,
                state=(grant.state if ended else GrantState.FAILED_CALLBACK).value,
                callback_state=CallbackState.GAVE_UP.value,
                callback_attempts=attempts,
                callback_error=outcome.error,
                callback_next_at=None,
            )
            log.error(
                "provisioning callback abandoned", grant_id=grant.id, attempts=attempts, error=outcome.error
            )
            return
        delay = backoff(min(attempts, 20) + 1, base=0.5, cap=self._max_delay)
        await self._store.grants.update_grant(
            grant.id,
            callback_state=CallbackState.PENDING.value,
            callback_attempts=attempts,
            callback_error=outcome.error,
            callback_next_at=now + timedelta(seconds=delay),
        )

    # -- the details endpoint --------------------------------------------------------------------------

    async def details(self, transfer_process_id: str, auth_code: str | None) -> Details:
        """The consumer's token for the connector's data plane. An unknown or ended transfer and a wrong
        code are refused alike, so the answer tells a guesser nothing."""
        grant = await self._store.grants.grant_by_transfer(transfer_process_id)
        live = grant is not None and grant.state != GrantState.DEPROVISIONED
        expected = self.auth_code_for(grant) if grant is not None else "-" * 43  # an auth code's length
        if not hmac.compare_digest(expected, auth_code or "") or not live or not auth_code:
            raise PermissionDeniedError("unknown transfer, or a missing or wrong X-Api-Key")
        assert grant is not None
        return Details(grant=grant, token=self.token_for(grant))

    # -- deprovisioning --------------------------------------------------------------------------------

    async def deprovision_grant(self, grant_id: str, why: str) -> Grant:
        """Revoke at once, stop the grant's jobs, remove its files. Repeating it changes nothing."""
        grant = await self._store.grants.get_grant(grant_id)
        if grant is None:
            raise NotFoundError("grant", grant_id)
        if grant.state != GrantState.DEPROVISIONED:
            await self._store.grants.update_grant(
                grant_id, state=GrantState.DEPROVISIONED.value, deprovisioned_at=utcnow()
            )
            log.info("grant deprovisioned", grant_id=grant_id, consumer_id=grant.consumer_id, why=why)
            await self._bus.revoke_grant(grant_id)  # open subscriptions end now, on every replica
        for job in await self._store.jobs.live_jobs_of_grant(grant_id):
            await self._supervisor.cancel(job, reason="DEPROVISIONED", message=f"grant ended: {why}")
        await self.purge(grant_id)
        return await self._store.grants.get_grant(grant_id) or grant

    async def purge(self, grant_id: str) -> bool:
        """Delete a deprovisioned grant's files once none of its jobs can still add any."""
        if self._retention != "delete":
            await self._store.grants.update_grant(grant_id, files_purged=True)
            return True
        if await self._store.jobs.live_jobs_of_grant(grant_id):
            return False
        for record in await self._store.files.files_of_grant(grant_id):
            await self._files.remove(record)
        await self._store.grants.update_grant(grant_id, files_purged=True)
        return True

    async def reap(self) -> None:
        """Deprovision expired grants and finish purging deprovisioned ones (one replica at a time)."""
        async with self._store.replicas.exclusive("grant-reaper", wait=False) as held:
            if not held:
                return
            for grant in await self._store.grants.expired_grants(utcnow()):
                await self.deprovision_grant(grant.id, "the contract expired")
            for grant in await self._store.grants.grants_to_purge():
                await self.purge(grant.id)

    async def list_grants(self, consumer_id: str | None = None) -> list[Grant]:
        return await self._store.grants.list_grants(consumer_id)

    async def list_consumers(self) -> list[Consumer]:
        return await self._store.grants.list_consumers()

    async def revoke_consumer(self, consumer_id: str, why: str) -> tuple[Consumer, list[Grant]]:
        """Deprovision every grant of a consumer (their tokens stop, their jobs are cancelled); returns the
        consumer and the grants it held. Repeating it changes nothing."""
        consumer = await self._store.grants.get_consumer(consumer_id)
        if consumer is None:
            raise NotFoundError("consumer", consumer_id)
        grants = [
            await self.deprovision_grant(grant.id, why)
            for grant in await self._store.grants.list_grants(consumer_id)
        ]
        return consumer, grants
