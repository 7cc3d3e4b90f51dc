"""Link tokens: one tenant, one cohort, minutes; anything altered, expired or for another cohort is refused."""

from __future__ import annotations

import base64
import time

from service.links import LINK_TOKEN_TTL_S, LinkSigner


def _signer(secret: bytes = b"s" * 32) -> LinkSigner:
    return LinkSigner(lambda: secret)


def test_a_token_names_its_tenant_for_its_cohort_only() -> None:
    signer = _signer()
    token, issued = signer.issue("lab-a", "c0ffee")
    assert signer.check(token, "c0ffee") == "lab-a"
    assert signer.check(token, "beef00") is None
    assert issued.expires_at - time.time() <= LINK_TOKEN_TTL_S + 1


def test_expired_altered_foreign_and_garbage_tokens_are_refused() -> None:
    signer = _signer()
    token, _ = signer.issue("lab-a", "c0ffee", now=time.time() - LINK_TOKEN_TTL_S - 5)
    assert signer.check(token, "c0ffee") is None  # expired
    fresh, _ = signer.issue("lab-a", "c0ffee")
    payload, signature = fresh.split(".")
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    forged = base64.urlsafe_b64encode(decoded.replace(b"lab-a", b"lab-b")).decode().rstrip("=")
    assert signer.check(f"{forged}.{signature}", "c0ffee") is None  # another tenant under the same signature
    assert signer.check(fresh[:-3] + "AAA", "c0ffee") is None
    assert _signer(b"another-secret-of-another-deploy").check(fresh, "c0ffee") is None
    for garbage in ("", ".", "abc", "a.b.c", "%%%.%%%", "x" * 5000):
        assert signer.check(garbage, "c0ffee") is None


def test_the_secret_is_read_once() -> None:
    reads = []
    signer = LinkSigner(lambda: reads.append(1) or b"k" * 32)
    token, _ = signer.issue("lab-a", "c1")
    for _ in range(5):
        signer.check(token, "c1")
    assert reads == [1]
