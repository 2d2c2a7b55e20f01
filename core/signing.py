"""Short-lived signed URLs for file content (download, and upload for createUpload on the file backend).

The signature is an HMAC over the method, file id and expiry with the server's secret key, so a URL
works without a token and only for the one file, one verb and until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, key: bytes, public_url: str) -> None:
        self._key = key
        self._public_url = public_url.rstrip("/")

    def _mac(self, method: str, file_id: str, expires: int) -> str:
        msg = f"{method.upper()}\n{file_id}\n{expires}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def url(self, method: str, file_id: str, ttl: int, now: float | None = None) -> tuple[str, int]:
        expires = int((now if now is not None else time.time()) + ttl)
        sig = self._mac(method, file_id, expires)
        return f"{self._public_url}/files/{file_id}/content?expires={expires}&signature={sig}", expires

    def verify(self, method: str, file_id: str, expires: str | None, signature: str | None) -> bool:
        if not expires or not signature or not expires.isdigit():
            return False
        if int(expires) < time.time():
            return False
        return hmac.compare_digest(self._mac(method, file_id, int(expires)), signature)
