"""Who the participant of a transfer is, asked of the connector's management API.

A milestone-8 request without an assignee and every request of the 0.16 data plane name no participant;
without one, each transfer becomes its own consumer (its quotas and jobs apart from the participant's
other transfers). With ``WML_EDC_MANAGEMENT_URL`` set, as the original middle-layer did, we read the
transfer process (its contract agreement's id), then the agreement (its consumer's id), with the
connector's key (``WML_EDC_API_KEY``). The paths of every EDC generation are tried, newest first
(``v3/``, ``v2/``, then milestone-8's ``transferprocess``); JSON-LD keys are read compacted or expanded.
A failure is the caller's to log: it then falls back to the transfer as its own consumer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

# (transfer processes, contract agreements) under the management API, newest EDC first.
GENERATIONS = (
    ("v3/transferprocesses", "v3/contractagreements"),
    ("v2/transferprocesses", "v2/contractagreements"),
    ("transferprocess", "contractagreements"),
)


class ManagementLookup:
    def __init__(self, base_url: str, api_key: str, http: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"X-Api-Key": api_key}
        self._http = http

    async def participant(self, transfer_id: str) -> str | None:
        """The consumer participant of ``transfer_id``; None when the connector does not say."""
        for processes, agreements in GENERATIONS:
            process = await self._get(f"{processes}/{quote(transfer_id, safe='')}")
            if process is None:
                continue
            agreement_id = _field(process, "contractId") or _field(process.get("dataRequest"), "contractId")
            if not agreement_id:
                return None
            agreement = await self._get(f"{agreements}/{quote(agreement_id, safe='')}")
            if agreement is None:
                return None
            return _field(agreement, "consumerId") or _field(agreement, "consumerAgentId")
        return None

    async def _get(self, path: str) -> dict[str, Any] | None:
        resp = await self._http.get(f"{self._base}/{path}", headers=self._headers)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        body = resp.json()
        return body if isinstance(body, dict) else None


def _field(node: Any, name: str) -> str | None:
    """``name`` of a JSON-LD object as EDC serialises it: plain, ``edc:``-prefixed or an expanded IRI,
    the value a string or ``{"@value": ...}`` (or a one-element list of those)."""
    if not isinstance(node, dict):
        return None
    for key, value in node.items():
        if key == name or key.endswith((f":{name}", f"/{name}")):
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, dict):
                value = value.get("@value", value.get("@id"))
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None
