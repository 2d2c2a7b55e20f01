"""Who is calling: API tokens (stored only as hashes), principals and their scope.

A consumer token belongs to one grant and sees only that grant's jobs and files and its asset. The
operator token (a setting) sees everything. An expired or revoked grant authenticates nobody.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime

from core.models import Grant, GrantState, utcnow
from core.store import Store

TOKEN_PREFIX = "wml_"


def mint_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is enough to make a leaked table useless.
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    consumer_id: str | None  # None for the operator
    grant_ids: frozenset[str]
    asset_ids: frozenset[str]
    is_operator: bool = False

    @property
    def grant_scope(self) -> list[str] | None:
        """Grant ids to filter by, or None: no filter (operator)."""
        return None if self.is_operator else sorted(self.grant_ids)

    def may_see(self, grant_id: str) -> bool:
        return self.is_operator or grant_id in self.grant_ids

    def may_use_asset(self, asset_id: str) -> bool:
        return self.is_operator or asset_id in self.asset_ids


OPERATOR = Principal(consumer_id=None, grant_ids=frozenset(), asset_ids=frozenset(), is_operator=True)


def grant_is_usable(grant: Grant, now: datetime | None = None) -> bool:
    # Any state but DEPROVISIONED: a provisioned grant's token is only ever revealed through the
    # details endpoint, whose secret travels in the callback, so the callback's state need not gate it
    # (and gating it would race the connector, which may pull before we record the 204).
    if grant.state == GrantState.DEPROVISIONED:
        return False
    return grant.expires_at is None or grant.expires_at > (now or utcnow())


RECENT_TTL = 2.0  # seconds a successful connect check is reused (at most; see Authenticator)
RECENT_SIZE = 10_000
REVOKED_KEPT = 1024  # recent revocations remembered, to tell whether one came during a read
# Grant reads for websocket connects at once (distinct tokens); the others wait their turn. Below the
# smallest connection pool (SQLite's 5), so a connection storm cannot drain the pool other work needs.
CONNECT_READS = 4


class Authenticator:
    def __init__(
        self,
        store: Store,
        admin_token: str,
        *,
        remember_for: float = RECENT_TTL,
        connect_reads: int = CONNECT_READS,
    ) -> None:
        self._store = store
        self._admin_hash = hash_token(admin_token)
        self._remember_for = remember_for
        # token hash -> (principal, until): recent successful checks, for websocket connects only
        self._recent: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        # token hash -> the connect check under way (single flight): (principal, revocations seen before)
        self._flights: dict[str, asyncio.Future[tuple[Principal | None, int]]] = {}
        self._admission = asyncio.Semaphore(connect_reads)
        self._revocations = 0  # revocations seen so far; the last REVOKED_KEPT grant ids are kept
        self._revoked: deque[str] = deque(maxlen=REVOKED_KEPT)

    def forget_grant(self, grant_id: str) -> None:
        """A grant was revoked (the event bus calls this): its tokens' remembered checks go at once."""
        self._revocations += 1
        self._revoked.append(grant_id)
        for digest in [d for d, (principal, _) in self._recent.items() if grant_id in principal.grant_ids]:
            del self._recent[digest]

    async def authenticate_connection(self, token: str | None) -> Principal | None:
        """:meth:`authenticate` for a websocket's ``connection_init``, made for a connection storm (every
        client reconnecting at once after a restart): concurrent checks of one token share one read (single
        flight), a success is remembered for a moment (``remember_for`` seconds), and at most
        ``connect_reads`` reads run at once, the other connects waiting their turn: a storm slows connects
        down instead of draining the connection pool and failing them. A revocation drops the remembered
        check at once (:meth:`forget_grant`), and one that lands after the shared read began refuses the
        token, so the caller can register for revocations with nothing missed in between. Only successes
        are kept: unknown tokens cannot push good ones out."""
        if not token:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        recent = self._recent.get(digest)
        if recent is not None and recent[1] > now:
            return recent[0]
        flight = self._flights.get(digest)
        if flight is None:
            flight = asyncio.ensure_future(self._connect_read(token))
            self._flights[digest] = flight
            flight.add_done_callback(lambda f: self._landed(digest, f))
        # Shielded: a client that leaves does not cancel the read the others wait for.
        principal, seen = await asyncio.shield(flight)
        if principal is not None and self._revoked_since(seen, principal.grant_ids):
            principal = None
        if principal is not None:
            self._recent[digest] = (principal, now + self._remember_for)
            self._recent.move_to_end(digest)
            while len(self._recent) > RECENT_SIZE:
                self._recent.popitem(last=False)
        else:
            self._recent.pop(digest, None)
        return principal

    async def _connect_read(self, token: str) -> tuple[Principal | None, int]:
        if hmac.compare_digest(hash_token(token), self._admin_hash):
            return OPERATOR, self._revocations
        async with self._admission:
            seen = self._revocations
            return await self.authenticate(token), seen

    def _landed(self, digest: str, flight: asyncio.Future[tuple[Principal | None, int]]) -> None:
        if self._flights.get(digest) is flight:
            del self._flights[digest]
        if not flight.cancelled():
            flight.exception()  # retrieved, even when every waiter left

    def _revoked_since(self, seen: int, grant_ids: frozenset[str]) -> bool:
        """Whether one of ``grant_ids`` was revoked after the ``seen``-th revocation (when more came than
        are kept, assume so: the caller connects again)."""
        count = self._revocations - seen
        if count > len(self._revoked):
            return True
        return any(grant_id in grant_ids for grant_id in list(self._revoked)[len(self._revoked) - count :])

    def connection_key(self, token: str) -> str:
        """What connections are counted by (per token): its hash, never the token itself."""
        return hash_token(token)

    async def authenticate(self, token: str | None) -> Principal | None:
        """The principal for a token, or None for a missing, unknown, revoked or expired one."""
        if not token:
            return None
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return OPERATOR
        grant = await self._store.grants.grant_by_token_hash(digest)
        if grant is None or not grant_is_usable(grant):
            return None
        return Principal(
            consumer_id=grant.consumer_id,
            grant_ids=frozenset({grant.id}),
            asset_ids=frozenset({grant.asset_id}),
        )


def bearer_token(authorization: str | None, access_token: str | None = None) -> str | None:
    """The token from ``Authorization: Bearer ...`` or the original's ``access-token`` header."""
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if access_token and access_token.strip():
        return access_token.strip()
    return None
