"""Shopify: ``X-Shopify-Hmac-Sha256`` webhooks and the orders and products listings.

Dedup keys are entity versions: ``order:<id>:<updated_at>`` and
``product:<id>:<updated_at>``, with ``updated_at`` in UTC written like
``2008-01-10T16:00:00Z``. Every webhook whose body has an integer ``id`` and an
``updated_at`` gets the key of that version, so ``orders/create``,
``orders/updated``, ``orders/paid`` and the polled order at one
``updated_at`` are one entry. The first to arrive sets the entry's type.
Other webhooks are keyed by what they carry:

* ``<resource>:<id>:deleted`` for ``*/delete`` topics. Listings do not return
  deleted objects, so a lost delete webhook cannot be recovered.
* ``<resource>:<id>:event:<X-Shopify-Event-Id>`` for a body with an ``id``
  but no ``updated_at``.
* ``event:<X-Shopify-Event-Id>`` for a body without an ``id``.

The event id is the same for every delivery of one event, retries included
(shopify.dev, "Ignore duplicate webhooks"). ``X-Shopify-Webhook-Id`` is used
where a delivery lacks it. ``<resource>`` is the topic's first part without
its plural ``s`` (``orders/paid`` -> ``order``). Only ``orders`` and
``products`` are listed, so only their versions are recovered by a reconcile.

Ids are kept as exact integers in keys and payloads. A webhook's payload is
the received body, and a listed object is serialised from Python's own
integers, never through a float.

Polled events are typed ``orders/create`` or ``products/create`` when
``created_at`` equals ``updated_at``, else ``orders/updated`` or
``products/update``: the topics Shopify sends for those changes.

Listings are ordered by ``updated_at`` ascending and page with the ``Link``
header's ``page_info`` cursor. The next link already carries every filter,
which Shopify forbids repeating next to ``page_info``.

NOTE: ``page_info`` is opaque. Objects updated while paging are listed only
if it marks a position in the sort order rather than an offset, which this
module assumes but no recorded Shopify response in the tests confirms.

Shopify signs only the body. ``X-Shopify-Triggered-At`` is not signed, so it
cannot reject replays. A replayed request has the key of the original and is
counted as a duplicate, but the event id header is not signed either, so a
replay of an event-keyed body under a new id is logged again.

A Shopify app's client secret signs the webhooks of every shop that installed
the app, so a webhook whose ``X-Shopify-Shop-Domain`` differs from the shop
of ``api_base_url`` is rejected rather than logged under this provider.

Shopify calls the REST Admin API legacy since October 2024 (shopify.dev,
"REST Admin API rate limits").
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import (
    Connector,
    EventRecord,
    Page,
    PageRequest,
    Window,
    dump_json,
    parse_json_body,
)
from connectors.parsing import (
    json_object_with_item_texts,
    link_request,
    parse_time,
    read_items,
    version_text,
)
from connectors.signing import hmac_sha256, matches_any
from syncd.errors import ConfigError, PayloadError, ResponseError, SignatureError

if TYPE_CHECKING:
    from syncd.config import ProviderConfig

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-shopify-hmac-sha256"
TOPIC_HEADER = "x-shopify-topic"
EVENT_ID_HEADER = "x-shopify-event-id"
WEBHOOK_ID_HEADER = "x-shopify-webhook-id"
TRIGGERED_AT_HEADER = "x-shopify-triggered-at"
SHOP_DOMAIN_HEADER = "x-shopify-shop-domain"
CALL_LIMIT_HEADER = "x-shopify-shop-api-call-limit"

MAX_LIMIT = 250  # maximum objects per page that Shopify returns
# Calls per second that leak from the bucket on the standard plan, per
# shopify.dev "REST Admin API rate limits". Higher plans leak faster, so the
# computed wait is longer than needed there, never shorter.
LEAK_RATE = 2.0
UPDATE_TOPICS = {"orders": "orders/updated", "products": "products/update"}
_API_VERSION = re.compile(r"^(\d{4}-(01|04|07|10)|unstable)$")
_CALL_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")

Resource = Literal["orders", "products"]


class ShopifyOptions(BaseModel):
    """Keys of a Shopify provider table beyond the common ones."""

    model_config = ConfigDict(extra="forbid")

    api_version: str
    resources: list[Resource] = Field(default=["orders", "products"], min_length=1)

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str) -> str:
        if not _API_VERSION.match(value):
            raise ValueError(
                f"invalid api_version {value!r}: write a Shopify release such as "
                "'2024-04' (the month is 01, 04, 07 or 10) or 'unstable'"
            )
        return value

    @field_validator("resources")
    @classmethod
    def _check_resources(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"resources {values} name one resource twice")
        return values


class ShopifyConnector(Connector):
    """One Shopify shop's orders and products through webhooks and the REST API."""

    name = "shopify"
    default_api_base_url = ""  # every shop has its own host
    Options = ShopifyOptions
    api_token_required = True
    max_page_size = MAX_LIMIT

    def __init__(self, provider: ProviderConfig) -> None:
        problems = self.check_provider(provider)
        if problems:
            where = f"providers.{provider.name}"
            raise ConfigError([f"{where}.{key}: {text}" for key, text in problems])
        super().__init__(provider)

    @classmethod
    def check_provider(cls, provider: ProviderConfig) -> list[tuple[str, str]]:
        """Return (key, message) problems of the common keys that Shopify needs."""
        if provider.api_base_url is not None:
            return []
        message = (
            "required key is missing; Shopify has no shared API host, so write "
            "the shop's own, e.g. 'https://example-shop.myshopify.com'"
        )
        return [("api_base_url", message)]

    # Webhooks

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        secret = self.provider.webhook_secret
        if secret is None:
            raise SignatureError("webhooks are off for this provider")
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            raise SignatureError("missing X-Shopify-Hmac-Sha256 header")

        digest = hmac_sha256(secret.get_secret_value().encode(), body)
        expected = base64.b64encode(digest).decode("ascii")
        if not matches_any(expected, [header.strip()]):
            raise SignatureError(
                "X-Shopify-Hmac-Sha256 does not match the body; check that "
                "webhook_secret is the app's client secret"
            )

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        topic = headers.get(TOPIC_HEADER)
        if not topic:
            raise PayloadError("missing X-Shopify-Topic header")
        self._check_shop(headers.get(SHOP_DOMAIN_HEADER))
        text, payload = _json_object(body)
        try:
            return [webhook_record(topic, payload, text, headers)]
        except ValueError as exc:
            raise PayloadError(f"{topic} webhook: {exc}") from None

    def _check_shop(self, domain: str | None) -> None:
        """Raise PayloadError for a webhook from a shop other than api_base_url's."""
        shop = urlsplit(self.api_base_url).hostname or ""
        if domain is None or not shop.endswith(".myshopify.com"):
            return
        if domain.strip().lower() != shop:
            raise PayloadError(
                f"webhook from shop {domain[:100]!r}, but this provider is for "
                f"{shop!r}; send each shop's webhooks to its own provider"
            )

    # Listings

    def listings(self) -> list[str]:
        return list(self.options.resources)

    def auth_headers(self) -> dict[str, str]:
        token = self.provider.api_token
        if token is None:
            return {}
        return {"X-Shopify-Access-Token": token.get_secret_value()}

    def rate_limit_wait(self, response: httpx.Response) -> float | None:
        """Return the wait until a tenth of the call bucket is free again.

        Reads ``X-Shopify-Shop-Api-Call-Limit: <used>/<size>`` and assumes the
        standard plan's leak rate (LEAK_RATE).
        """
        value = response.headers.get(CALL_LIMIT_HEADER)
        if value is None:
            return None
        match = _CALL_LIMIT.match(value)
        if match is None or int(match[2]) == 0:
            log.warning("ignoring unreadable %s header %r", CALL_LIMIT_HEADER, value)
            return None

        used, size = int(match[1]), int(match[2])
        reserve = max(1, size // 10)
        free = size - used
        if free > reserve:
            return None
        return (reserve + 1 - free) / LEAK_RATE

    def first_request(self, listing: str, window: Window) -> PageRequest:
        params = [("status", "any")] if listing == "orders" else []
        if window.since is not None:
            params.append(("updated_at_min", since_param(window.since)))
        params.append(("limit", str(self._page_limit())))
        params.append(("order", "updated_at asc"))
        url = f"/admin/api/{self.options.api_version}/{listing}.json"
        return PageRequest(url=url, params=tuple(params))

    def _page_limit(self) -> int:
        """Return ``page_size`` if the table sets it, else Shopify's maximum."""
        if "page_size" in self.provider.model_fields_set:
            return self.provider.page_size
        return MAX_LIMIT

    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        body, texts = json_object_with_item_texts(response, listing)
        items = body.get(listing)
        if not isinstance(items, list):
            raise ResponseError(f"expected a JSON object with a {listing!r} array")
        records, rejected = read_items(
            items, lambda item, text: listed_record(listing, item, text), texts
        )

        next_url = response.links.get("next", {}).get("url")
        next_request = None if next_url is None else link_request(next_url)
        return Page(records=records, next=next_request, rejected=rejected)


def since_param(since: datetime) -> str:
    """Format a window's start for ``updated_at_min``: whole seconds, one early.

    The margin keeps an object updated in the window's first second whether
    Shopify compares with ``>`` or ``>=``.
    """
    start = math.floor(since.timestamp()) - 1
    return datetime.fromtimestamp(start, UTC).isoformat()


def webhook_record(
    topic: str, payload: dict[str, Any], text: str, headers: Mapping[str, str]
) -> EventRecord:
    """Build the record of one webhook; raise ValueError naming what is missing."""
    family, _, verb = topic.partition("/")
    object_id = payload.get("id")
    if not _is_integer(object_id):
        return _event_record(None, topic, text, headers)

    resource = f"{_singular(family)}:{object_id}"
    if verb == "delete":
        return EventRecord(
            key=f"{resource}:deleted",
            type=topic,
            occurred_at=_triggered_at(headers),
            payload=text,
            resource=resource,
            version="deleted",
        )
    if isinstance(payload.get("updated_at"), str):
        return _version_record(resource, payload, topic, text)
    return _event_record(resource, topic, text, headers)


def listed_record(listing: str, item: Any, text: str | None = None) -> EventRecord:
    """Build the record of one listed order or product.

    ``text`` is the item's exact JSON text in the page, stored as the payload;
    without it the item is serialised.
    """
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    object_id = item.get("id")
    if not _is_integer(object_id):
        raise ValueError("missing integer 'id'")
    updated = item.get("updated_at")
    if updated is not None and item.get("created_at") == updated:
        kind = f"{listing}/create"
    else:
        kind = UPDATE_TOPICS[listing]
    resource = f"{_singular(listing)}:{object_id}"
    return _version_record(
        resource, item, kind, dump_json(item) if text is None else text
    )


def _version_record(
    resource: str, item: dict[str, Any], kind: str, payload: str
) -> EventRecord:
    value = item.get("updated_at")
    if not isinstance(value, str):
        raise ValueError(f"{resource} has no string 'updated_at'")
    occurred_at = parse_time(value, "updated_at")
    version = version_text(occurred_at)
    return EventRecord(
        key=f"{resource}:{version}",
        type=kind,
        occurred_at=occurred_at,
        payload=payload,
        resource=resource,
        version=version,
    )


def _event_record(
    resource: str | None, topic: str, text: str, headers: Mapping[str, str]
) -> EventRecord:
    event_id = headers.get(EVENT_ID_HEADER) or headers.get(WEBHOOK_ID_HEADER)
    if not event_id:
        raise ValueError("missing X-Shopify-Event-Id and X-Shopify-Webhook-Id headers")
    key = f"event:{event_id}" if resource is None else f"{resource}:event:{event_id}"
    return EventRecord(
        key=key,
        type=topic,
        occurred_at=_triggered_at(headers),
        payload=text,
        resource=resource,
    )


def _triggered_at(headers: Mapping[str, str]) -> datetime:
    value = headers.get(TRIGGERED_AT_HEADER)
    if value:
        try:
            return parse_time(value, "X-Shopify-Triggered-At")
        except ValueError as exc:
            log.warning("using this host's clock: %s", exc)
    # NOTE: this falls back to the receiving host's clock, not provider time.
    return datetime.now(UTC)


def _singular(family: str) -> str:
    return family[:-1] if family.endswith("s") else family


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json_object(body: bytes) -> tuple[str, dict[str, Any]]:
    text, payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise PayloadError(f"expected a JSON object, got {type(payload).__name__}")
    return text, payload
