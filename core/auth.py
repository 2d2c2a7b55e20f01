"""Who is calling: API tokens (stored only as hashes), principals and their scope.

A consumer token belongs to one grant and sees only that grant's jobs and files and its asset. The
operator token (a setting) sees everything. An expired or revoked grant authenticates nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
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


RECENT_TTL = 2.0  # seconds a successful connect check is reused
RECENT_SIZE = 10_000


class Authenticator:
    def __init__(self, store: Store, admin_token: str) -> None:
        self._store = store
        self._admin_hash = hash_token(admin_token)
        # token hash -> (principal, until): recent successful checks, for websocket connects only
        self._recent: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def authenticate_connection(self, token: str | None) -> Principal | None:
        """:meth:`authenticate` for a websocket's ``connection_init``, remembered for :data:`RECENT_TTL`
        seconds so that a burst of connects with one token reads its grant once. A revocation still cuts
        the connection (the event bus tells it at once, and streams recheck their grant), and a token
        revoked in that window is refused from the next connect on at the latest :data:`RECENT_TTL` later.
        Only successes are kept: unknown tokens cannot push good ones out."""
        if not token:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        recent = self._recent.get(digest)
        if recent is not None and recent[1] > now:
            return recent[0]
        principal = await self.authenticate(token)
        if principal is not None:
            self._recent[digest] = (principal, now + RECENT_TTL)
            self._recent.move_to_end(digest)
            while len(self._recent) > RECENT_SIZE:
                self._recent.popitem(last=False)
        else:
            self._recent.pop(digest, None)
        return principal

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
