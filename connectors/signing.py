"""HMAC helpers shared by the connectors' webhook verifiers."""

from __future__ import annotations

import hashlib
import hmac


def hmac_sha256(secret: bytes, message: bytes) -> bytes:
    """Return the HMAC-SHA256 digest of ``message`` under ``secret``."""
    return hmac.new(secret, message, hashlib.sha256).digest()


def matches_any(expected: str, candidates: list[str]) -> bool:
    """Compare ``expected`` with every candidate in constant time each.

    Every candidate is compared, so the time taken does not reveal which one
    matched.
    """
    found = False
    for candidate in candidates:
        if hmac.compare_digest(expected.encode(), candidate.encode()):
            found = True
    return found
