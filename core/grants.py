"""Consumers and grants created by the operator (EDC provisioning builds on the same steps).

A grant gives one consumer one asset; its API token is shown once and stored only as a hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from core.auth import hash_token, mint_token
from core.errors import NotFoundError, ValidationError
from core.models import Consumer, Grant, new_id, utcnow
from core.store import Store


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    consumer: Consumer
    grant: Grant
    token: str  # the clear token: hand it to the consumer, never store or log it


async def create_consumer_with_grants(
    store: Store, name: str, asset_ids: list[str], *, lifetime: int | None = None
) -> list[IssuedGrant]:
    """A new consumer with one grant (and token) per asset."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationError("consumer name must be 1 to 200 characters", field="name")
    if not asset_ids:
        raise ValidationError("name at least one asset", field="asset")
    if lifetime is not None and lifetime <= 0:
        raise ValidationError("a grant's lifetime must be a positive number of seconds", field="expires_in")
    for asset_id in asset_ids:
        if await store.assets.get_asset(asset_id) is None:
            raise NotFoundError("asset", asset_id)
    consumer = await store.grants.create_consumer(new_id("c"), name)
    issued = []
    for asset_id in asset_ids:
        token = mint_token()
        expires = utcnow() + timedelta(seconds=lifetime) if lifetime else None
        grant = await store.grants.create_grant(
            new_id("g"), consumer.id, asset_id, hash_token(token), expires
        )
        issued.append(IssuedGrant(consumer=consumer, grant=grant, token=token))
    return issued
