"""The operator's commands over the API with the operator token, so they work against a remote deployment
as well as a local one: ``wml consumers create|list|tokens|revoke`` and ``wml grants``. (Without a URL,
``wml consumers create`` writes to the database directly: it bootstraps a deployment before anything
serves the API.)"""

from __future__ import annotations

import argparse
from typing import Any

from wml.client.api import Client
from wml.commands.common import OK, Output, client_parser

GRANT_STATES = ("PROVISIONING", "ACTIVE", "FAILED_CALLBACK", "DEPROVISIONED")
GRANT_COLUMNS = ("GRANT", "CONSUMER", "ASSET", "STATE", "CREATED", "EXPIRES", "TRANSFER")


def add_operator_commands(consumers: Any, sub: Any, common: argparse.ArgumentParser) -> None:
    """``consumers`` is the ``wml consumers`` sub-command set."""
    create = client_parser(
        consumers,
        "create",
        common,
        help="create a consumer with a grant per asset; prints its tokens once",
        description="With --url (or WML_URL) through the API with the operator token; without, straight "
        "into the database (WML_DATABASE_URL), to bootstrap a deployment before anything serves.",
    )
    create.add_argument("name")
    create.add_argument("--asset", action="append", required=True, help="asset id (repeatable)")
    create.add_argument("--expires-in", type=int, help="grant lifetime in seconds (default: no expiry)")
    create.set_defaults(client_command=consumers_create)
    listing = client_parser(consumers, "list", common, help="every consumer, oldest first")
    listing.set_defaults(client_command=consumers_list)
    tokens = client_parser(
        consumers,
        "tokens",
        common,
        help="a consumer's tokens: one per grant (the tokens themselves are never stored, only their hashes)",
    )
    tokens.add_argument("consumer_id", metavar="CONSUMER")
    tokens.set_defaults(client_command=consumers_tokens)
    revoke = client_parser(
        consumers, "revoke", common, help="revoke all of a consumer's grants: tokens stop, jobs are cancelled"
    )
    revoke.add_argument("consumer_id", metavar="CONSUMER")
    revoke.set_defaults(client_command=consumers_revoke)

    grants = client_parser(sub, "grants", common, help="every grant (operator), oldest first")
    grants.add_argument("--consumer", metavar="CONSUMER", help="only this consumer's")
    grants.add_argument("--state", choices=GRANT_STATES, help="only grants in this state")
    grants.set_defaults(client_command=grants_command)


def _grant_rows(grants: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            g["id"],
            g["consumerId"],
            g["assetId"],
            g["state"],
            g["createdAt"],
            g["expiresAt"] or "never",
            g["transferProcessId"],
        )
        for g in grants
    ]


def print_created(out: Output, created: dict[str, Any]) -> None:
    """A new consumer and its tokens (``createConsumer``'s answer, or the same shape from the database)."""

    def text() -> None:
        consumer = created["consumer"]
        out.line(f"consumer {consumer['id']} ({consumer['name']})")
        for issued in created["tokens"]:
            grant = issued["grant"]
            out.line(
                f"  asset {grant['assetId']}: grant {grant['id']}, expires {grant['expiresAt'] or 'never'}"
            )
            out.line(f"    token (shown once): {issued['token']}")

    out.result(created, text)


async def consumers_create(client: Client, out: Output, args: argparse.Namespace) -> int:
    print_created(out, await client.create_consumer(args.name, args.asset, args.expires_in))
    return OK


async def consumers_list(client: Client, out: Output, args: argparse.Namespace) -> int:
    consumers = await client.consumers()
    grants = await client.grants()
    active = {c["id"]: 0 for c in consumers}
    for g in grants:
        if g["state"] != "DEPROVISIONED" and g["consumerId"] in active:
            active[g["consumerId"]] += 1
    listed = [{**c, "activeGrants": active[c["id"]]} for c in consumers]
    out.result(
        listed,
        lambda: out.table(
            ("CONSUMER", "NAME", "CREATED", "LIVE GRANTS"),
            [(c["id"], c["name"], c["createdAt"], c["activeGrants"]) for c in listed],
        ),
    )
    return OK


async def consumers_tokens(client: Client, out: Output, args: argparse.Namespace) -> int:
    grants = await client.grants(consumer_id=args.consumer_id)
    out.result(grants, lambda: out.table(GRANT_COLUMNS, _grant_rows(grants)))
    return OK


async def consumers_revoke(client: Client, out: Output, args: argparse.Namespace) -> int:
    revoked = await client.revoke_consumer(args.consumer_id)
    consumer = revoked["consumer"]
    out.result(
        revoked,
        lambda: out.line(
            f"consumer {consumer['id']} ({consumer['name']}): {len(revoked['grants'])} grants revoked"
        ),
    )
    return OK


async def grants_command(client: Client, out: Output, args: argparse.Namespace) -> int:
    grants = await client.grants(consumer_id=args.consumer, state=args.state)
    out.result(grants, lambda: out.table(GRANT_COLUMNS, _grant_rows(grants)))
    return OK
