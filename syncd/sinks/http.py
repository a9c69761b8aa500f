"""The ``http`` sink: POST each event, signed with the Standard Webhooks scheme.

Headers: ``webhook-id`` (the idempotency key, the same on every attempt),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the base64 key
after ``whsec_``), so any Standard Webhooks library verifies it. A 2xx
answer means delivered.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx

from connectors.signing import hmac_sha256
from syncd.fetch import retry_after
from syncd.sinks.base import Outcome, Sink


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac_sha256(key, signed)).decode()


class HttpSink(Sink):
    """POSTs envelopes to the user's endpoint."""

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self.client = httpx.Client(
            timeout=settings.timeout.total_seconds(), trust_env=False
        )

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        headers = {
            **self.settings.headers,
            "content-type": "application/json",
            "webhook-id": idempotency_key,
            "webhook-timestamp": str(timestamp),
        }
        if self.settings.secret is not None:
            secret = self.settings.secret.get_secret_value()
            headers["webhook-signature"] = sign(
                secret, idempotency_key, timestamp, body
            )
        try:
            response = self.client.post(
                self.settings.url, content=body, headers=headers
            )
        except httpx.TimeoutException:
            return Outcome.failed(f"POST {self.settings.url} timed out")
        except httpx.TransportError as exc:
            return Outcome.failed(f"POST {self.settings.url} failed: {exc!r}")
        if response.is_success:
            return Outcome.ok()
        return Outcome.failed(
            f"POST {self.settings.url} answered {response.status_code}",
            retry_after=retry_after(response),
        )

    def close(self) -> None:
        self.client.close()
