"""The ``http`` sink: POST each event, signed with the Standard Webhooks scheme.

Headers: ``webhook-id`` (the idempotency key, the same on every attempt),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the base64 key
after ``whsec_``), so any Standard Webhooks library verifies it. A 2xx
response means delivered, and the response body is not read.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import httpx

from connectors.signing import hmac_sha256
from syncd.fetch import retry_after
from syncd.sinks.base import Outcome, Sink


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac_sha256(key, signed)).decode()


def origin_of(url: str) -> str:
    """Return ``scheme://host[:port]`` of a URL, without any user part."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def redact_webhook_url(url: str) -> str:
    """Return a URL for errors and logs: its origin, and ``/…`` for the rest.

    Webhook URLs often carry a token in the user part, the path (as Slack's
    and Discord's do) or the query, so only the origin is shown. ``/…``
    marks that a path or query was left out.
    """
    parts = urlsplit(url)
    hidden = parts.path not in ("", "/") or parts.query
    return origin_of(url) + ("/…" if hidden else "")


class HttpSink(Sink):
    """POSTs envelopes to the user's endpoint."""

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self.client = httpx.Client(
            timeout=settings.timeout.total_seconds(), trust_env=False
        )
        self.redacted_url = redact_webhook_url(settings.url)

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
        # NOTE: httpx applies the timeout to each connect, write and read, so a
        # receiver that sends its headers a byte at a time can take longer.
        try:
            with self.client.stream(
                "POST", self.settings.url, content=body, headers=headers
            ) as response:
                status, wait = response.status_code, retry_after(response)
        except httpx.TimeoutException:
            return Outcome.failed(f"POST to {self.redacted_url} timed out")
        except httpx.TransportError as exc:
            return Outcome.failed(
                f"POST to {self.redacted_url} failed: {type(exc).__name__}: {exc}"
            )
        if 200 <= status < 300:
            return Outcome.ok()
        return Outcome.failed(
            f"POST to {self.redacted_url} answered {status}", retry_after=wait
        )

    def close(self) -> None:
        self.client.close()
