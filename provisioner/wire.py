"""The exact JSON the connector expects from us: the provisioning callback and the details answer."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from core.models import Grant
from core.provisioning import resource_name

CALLBACK_EDCTYPE = "dataspaceconnector:provisioner-callback-request"


def details_url(public_url: str, transfer_process_id: str) -> str:
    return f"{public_url}/provision/details/{quote(transfer_process_id, safe='')}"


def callback_body(grant: Grant, public_url: str, auth_code: str) -> dict[str, Any]:
    assert grant.transfer_process_id is not None
    return {
        "edctype": CALLBACK_EDCTYPE,
        "resourceDefinitionId": grant.resource_definition_id,
        "assetId": grant.asset_id,
        "resourceName": resource_name(grant.transfer_process_id),
        # Wrapped in "properties": a flat object silently loses every key but "type".
        "contentDataAddress": {
            "properties": {
                "type": "HttpData",
                "baseUrl": details_url(public_url, grant.transfer_process_id),
                "authKey": "X-Api-Key",
                "authCode": auth_code,
            }
        },
        # Kept in the connector's vault under resourceName; not a secret of ours.
        "apiKeyJwt": f"wml-grant:{grant.id}",
        "hasToken": True,
    }


def dataplane_callback_body(grant: Grant, public_url: str, auth_code: str) -> dict[str, Any]:
    """The data plane's provisioned callback: the DataAddress the consumer's side reads, the same one as
    in the control plane's callback (the details URL and the key to read it with)."""
    assert grant.transfer_process_id is not None
    return {
        "dataAddress": {
            "properties": {
                "type": "HttpData",
                "baseUrl": details_url(public_url, grant.transfer_process_id),
                "authKey": "X-Api-Key",
                "authCode": auth_code,
            }
        }
    }


def details_body(grant: Grant, public_url: str, token: str) -> dict[str, Any]:
    ws = (
        "wss://" + public_url[len("https://") :]
        if public_url.startswith("https://")
        else ("ws://" + public_url.removeprefix("http://"))
    )
    return {
        "graphqlUrl": f"{public_url}/graphql",
        "websocketUrl": f"{ws}/graphql",
        "token": token,
        "assetId": grant.asset_id,
        "transferProcessId": grant.transfer_process_id,
        "expiresAt": grant.expires_at.isoformat() if grant.expires_at else None,
    }
