"""Where provisioning callbacks may go: only under the connector's origins (``WML_EDC_CALLBACK_ORIGINS``).

A provision request names its own ``callbackAddress``, and we POST to it carrying the connector's
management key: unchecked, that is a request forgery that also hands the key to whoever asked. So the
address must be a plain ``http(s)`` URL whose scheme, host and port are exactly one of the configured
origins, with no userinfo, query, fragment, backslash, control character or encoded path trick; the
callback URL is then built from the checked parts, so nothing in the request can change its path or
query. The check runs when the request arrives and again before every send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORTS[self.scheme] == self.port
        return f"{self.scheme}://{host}" + ("" if default else f":{self.port}")


def parse_origins(text: str) -> frozenset[Origin]:
    """The origins of a comma-separated ``scheme://host[:port]`` list; ValueError names a bad entry."""
    origins = set()
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        origin = _origin_of(entry)
        if origin is None or urlsplit(entry).path not in ("", "/"):
            raise ValueError(f"{entry!r} is not an origin (scheme://host[:port], http or https)")
        origins.add(origin)
    return frozenset(origins)


def _origin_of(url: str) -> Origin | None:
    if any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url) or "?" in url or "#" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or "@" in parts.netloc or not parts.hostname:
        return None
    return Origin(scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme])


def checked_base(address: str, allowed: frozenset[Origin]) -> str | None:
    """The callback base rebuilt from ``address``'s checked parts, or None when it may not be called."""
    origin = _origin_of(address)
    if origin is None or origin not in allowed:
        return None
    path = urlsplit(address).path.rstrip("/")
    if not _PATH.fullmatch(path) or re.search(r"%(2[fF]|5[cC]|00)", path):
        return None
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return None
    return f"{origin}{path}"


def dataplane_callback_url(base: str, flow_id: str, resource_id: str, action: str) -> str:
    """``{base}/{flowId}/{provisionResourceId}/provision|deprovision``: the data plane's provisioning
    context (EDC 0.14+); each id is one encoded path segment."""
    return f"{base}/{quote(flow_id, safe='')}/{quote(resource_id, safe='')}/{action}"


def callback_url(base: str, transfer_process_id: str) -> str:
    """``{base}/{transferProcessId}/provision``; the id is one encoded path segment, whatever it holds."""
    return f"{base}/{quote(transfer_process_id, safe='')}/provision"
