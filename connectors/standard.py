"""Standard Webhooks: any provider that signs with ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature``, with optional polling.

Each webhook body is one event. Its dedup key is the ``webhook-id`` header,
which the provider keeps across retries of one message. When the provider
also lists its events through an API, set ``key_field`` to the payload field
that contains the id the listing returns (``listing.id_field``). A webhook
and its polled copy are then one log entry. Without ``key_field`` the two
streams agree only when the listing's ids are the webhook ids.

The optional ``listing`` table takes every key of the ``rest`` connector's
listing (path, items, id_field, cursor, pagination and so on).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict

from connectors.base import Connector, EventRecord, Page, PageRequest, Window
from connectors.rest import (
    MISSING,
    FieldPath,
    ListingOptions,
    Problems,
    RestListing,
    TimeFormat,
    check_api_base_url,
    lookup,
    parse_json_body,
    parse_time_value,
    raise_problems,
)
from connectors.verifiers import (
    StandardWebhooksVerifier,
    VerifiedWebhooks,
    decode_standard_secret,
)
from syncd.errors import PayloadError, ResponseError

if TYPE_CHECKING:
    from syncd.config import ProviderConfig


class StandardOptions(BaseModel):
    """Keys of a ``standard-webhooks`` provider table beyond the common ones."""

    model_config = ConfigDict(extra="forbid")

    key_field: FieldPath | None = None
    type_field: FieldPath = "type"
    time_field: FieldPath | None = None
    time_format: TimeFormat = "iso8601"
    listing: ListingOptions | None = None


class StandardWebhooksConnector(VerifiedWebhooks, Connector):
    """Standard Webhooks signatures, and optionally a JSON list API to poll."""

    name = "standard-webhooks"
    default_api_base_url = ""
    Options = StandardOptions

    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        raise_problems(provider, self.check_provider(provider))
        if provider.webhook_secret is not None:
            self.verifier = StandardWebhooksVerifier(
                provider.webhook_secret.get_secret_value(),
                provider.signature_tolerance.total_seconds(),
            )
        self.listing: RestListing | None = None
        if self.options.listing is not None:
            self.listing = RestListing(self.options.listing, provider)

    @classmethod
    def check_provider(cls, provider: ProviderConfig) -> Problems:
        """Return (key, message) problems that involve the common keys."""
        options: StandardOptions = provider.options
        problems: Problems = []
        if options.listing is not None:
            problems.extend(check_api_base_url(provider))
        secret = provider.webhook_secret
        if secret is None and options.listing is None:
            problems.append(
                (
                    "webhook_secret",
                    "required: set the endpoint's signing secret (whsec_...), "
                    "or add a listing table to poll instead",
                )
            )
        elif secret is not None:
            try:
                decode_standard_secret(secret.get_secret_value())
            except ValueError as exc:
                problems.append(("webhook_secret", str(exc)))
        return problems

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        text, payload = parse_json_body(body)
        if not isinstance(payload, dict):
            raise PayloadError("expected a JSON object as the body")
        return [
            EventRecord(
                key=self._key(headers, payload),
                type=self._type(payload),
                occurred_at=self._occurred_at(headers, payload),
                payload=text,
            )
        ]

    def _key(self, headers: Mapping[str, str], payload: dict[str, Any]) -> str:
        field = self.options.key_field
        if field is None:
            message_id = headers.get("webhook-id")
            if not message_id:
                raise PayloadError("missing webhook-id header")
            return message_id
        value = lookup(payload, field)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and value:
            return value
        raise PayloadError(
            f"the body has no string or integer {field!r}; check key_field"
        )

    def _type(self, payload: dict[str, Any]) -> str:
        field = self.options.type_field
        value = lookup(payload, field)
        if isinstance(value, str) and value:
            return value
        raise PayloadError(f"the body has no string {field!r}; check type_field")

    def _occurred_at(
        self, headers: Mapping[str, str], payload: dict[str, Any]
    ) -> datetime:
        field = self.options.time_field
        if field is None:
            text = headers.get("webhook-timestamp", "")
            if not text.isascii() or not text.isdigit():
                raise PayloadError("missing or invalid webhook-timestamp header")
            return datetime.fromtimestamp(int(text), UTC)
        value = lookup(payload, field)
        if value is MISSING:
            raise PayloadError(f"the body has no {field!r}; check time_field")
        try:
            return parse_time_value(value, self.options.time_format)
        except ValueError as exc:
            raise PayloadError(f"{field!r} is not a time: {exc}") from None

    def listings(self) -> list[str]:
        return [] if self.listing is None else ["events"]

    def auth_headers(self) -> dict[str, str]:
        return {} if self.listing is None else self.listing.auth_headers()

    def first_request(self, listing: str, window: Window) -> PageRequest:
        return self._listing().first_request(window)

    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        return self._listing().parse_page(request, response)

    def _listing(self) -> RestListing:
        if self.listing is None:
            raise ResponseError(
                f"provider {self.provider.name} has no listing table, so it "
                "cannot be polled"
            )
        return self.listing
