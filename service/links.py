"""Short-lived link tokens: what a browser puts in a URL where it cannot send the API key (EventSource,
``<img>``, a download link). A token names one tenant and one cohort, expires after
:data:`LINK_TOKEN_TTL_S` seconds, and opens only that cohort's read-only streams (events, previews,
archive); the API key itself never appears in a URL.

A token is ``base64url(tenant \\n cohort \\n expiry) . base64url(HMAC-SHA256(secret, payload))``. The secret
is made once and kept in Redis (:func:`jobs.state.link_secret`), so every API replica signs and checks with
the same one and it needs no configuration; flushing Redis invalidates outstanding tokens (minutes old).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

#: How long a link token opens its cohort's streams (an SSE connection opened in time stays open).
LINK_TOKEN_TTL_S = 600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class LinkToken:
    tenant: str
    cohort_id: str
    expires_at: float


class LinkSigner:
    """Signs and checks link tokens with a secret read once from ``secret`` (e.g. :func:`jobs.state.link_secret`)."""

    def __init__(self, secret: Callable[[], bytes]) -> None:
        self._read_secret = secret
        self._secret: bytes | None = None

    def _key(self) -> bytes:
        if self._secret is None:
            self._secret = self._read_secret()
        return self._secret

    def issue(self, tenant: str, cohort_id: str, now: float | None = None) -> tuple[str, LinkToken]:
        """A token for ``tenant``'s ``cohort_id``, valid for :data:`LINK_TOKEN_TTL_S` seconds."""
        expires = int((time.time() if now is None else now) + LINK_TOKEN_TTL_S)
        payload = f"{tenant}\n{cohort_id}\n{expires}".encode()
        signature = hmac.new(self._key(), payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(signature)}", LinkToken(tenant, cohort_id, expires)

    def check(self, token: str, cohort_id: str, now: float | None = None) -> str | None:
        """The tenant a valid, unexpired token for ``cohort_id`` names; ``None`` for anything else."""
        payload_text, dot, signature_text = token.partition(".")
        if not dot or len(token) > 1024:
            return None
        try:
            payload, signature = _unb64(payload_text), _unb64(signature_text)
            tenant, token_cohort, expires = payload.decode().split("\n")
            expires_at = int(expires)
        except (ValueError, UnicodeDecodeError):
            return None
        expected = hmac.new(self._key(), payload, hashlib.sha256).digest()
        if not hmac.compare_digest(signature, expected) or token_cohort != cohort_id:
            return None
        if expires_at < (time.time() if now is None else now):
            return None
        return tenant
