"""Stripe: ``Stripe-Signature`` webhooks and the ``/v1/events`` listing.

The dedup key is the event id (``evt_…``): ``/v1/events`` returns the same
event objects that webhooks carry, so both streams agree on it.

``/v1/events`` lists newest first and pages with ``starting_after`` (an
object id, so events that appear while paging cannot shift a page). A run
fixes its window with inclusive ``created[gte]`` and ``created[lte]`` bounds;
several events in one second are therefore all inside the window, and the
database drops the ones already stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from connectors.base import (
    Connector,
    EventRecord,
    Page,
    PageRequest,
    Window,
    dump_json,
    parse_json_body,
)
from connectors.parsing import item_text, json_object_with_item_texts
from connectors.signing import hmac_sha256, matches_any
from connectors.verifiers import check_tolerance
from syncd.errors import PayloadError, ResponseError, SignatureError

SIGNATURE_HEADER = "stripe-signature"
# Maximum ``limit`` of GET /v1/events: Stripe documents a range of 1 to 100.
MAX_LIMIT = 100


class StripeOptions(BaseModel):
    """Keys of a Stripe provider table beyond the common ones."""

    model_config = ConfigDict(extra="forbid")

    event_types: list[str] = []


class StripeConnector(Connector):
    """Stripe events through webhooks and ``GET /v1/events``."""

    name = "stripe"
    default_api_base_url = "https://api.stripe.com"
    Options = StripeOptions
    api_token_required = True
    retention = timedelta(days=30)
    max_page_size = MAX_LIMIT

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        secret = self.provider.webhook_secret
        if secret is None:
            raise SignatureError("webhooks are off for this provider")
        timestamp, signatures = parse_signature_header(headers.get(SIGNATURE_HEADER))

        expected = hmac_sha256(
            secret.get_secret_value().encode(), f"{timestamp}.".encode() + body
        ).hex()
        if not matches_any(expected, signatures):
            raise SignatureError(
                "no v1 signature in the Stripe-Signature header matches the body; "
                "check that webhook_secret is this endpoint's signing secret"
            )

        tolerance = self.provider.signature_tolerance.total_seconds()
        check_tolerance(timestamp, now, tolerance)

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        text, event = parse_json_body(body)
        try:
            record = self.event_record(event, text)
        except ValueError as exc:
            raise PayloadError(str(exc)) from None
        return [record]

    def first_request(self, listing: str, window: Window) -> PageRequest:
        params = [("limit", str(self.provider.page_size))]
        if window.since is not None:
            params.append(("created[gte]", str(math.floor(window.since.timestamp()))))
        if window.until is not None:
            params.append(("created[lte]", str(math.ceil(window.until.timestamp()))))
        params.extend(("types[]", name) for name in self.options.event_types)
        return PageRequest(url="/v1/events", params=tuple(params))

    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        body, texts = json_object_with_item_texts(response, "data")
        _raise_for_error_object(body)
        data, has_more = body.get("data"), body.get("has_more")
        if body.get("object") != "list" or not isinstance(data, list):
            raise ResponseError("expected a list object with a 'data' array")
        if not isinstance(has_more, bool):
            raise ResponseError("expected a boolean 'has_more'")

        # An event that cannot be read is set aside for the quarantine, so
        # that the rest of the page is stored and the listing goes on.
        page = Page(records=[], next=None)
        for item, text in zip(data, texts, strict=True):
            try:
                payload = dump_json(item) if text is None else text
                page.records.append(self.event_record(item, payload))
            except (ValueError, RecursionError) as exc:
                page.rejected.append((item_text(item), f"invalid event: {exc}"))

        if not has_more:
            return page
        if not data:
            raise ResponseError("'has_more' is true but 'data' is empty")
        last_id = _last_id(data)
        if last_id is None:
            raise ResponseError(
                "'has_more' is true but no event in 'data' has a string 'id' "
                "to continue after"
            )
        params = [p for p in request.params if p[0] != "starting_after"]
        params.append(("starting_after", last_id))
        page.next = PageRequest(request.url, tuple(params))
        return page

    def event_record(self, event: Any, payload: str) -> EventRecord:
        """Build the record of one Stripe event object; raise ValueError if invalid."""
        if not isinstance(event, dict) or event.get("object") != "event":
            raise ValueError("expected a Stripe event object ('object': 'event')")
        event_id, kind, created = (
            event.get("id"),
            event.get("type"),
            event.get("created"),
        )
        if not isinstance(event_id, str) or not event_id.strip():
            raise ValueError("event has no string 'id'")
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"event {event_id} has no string 'type'")
        if not isinstance(created, int) or isinstance(created, bool):
            raise ValueError(f"event {event_id} has no integer 'created'")

        try:
            occurred_at = datetime.fromtimestamp(created, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(
                f"event {event_id} has 'created' {created}, which is out of range"
            ) from None

        resource = _resource(event)
        return EventRecord(
            key=event_id,
            type=kind,
            occurred_at=occurred_at,
            payload=payload,
            resource=resource,
            version=str(created),
        )


def parse_signature_header(value: str | None) -> tuple[int, list[str]]:
    """Split ``t=…,v1=…,v1=…`` into the timestamp and every v1 signature."""
    if not value:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    signatures = []
    for item in value.split(","):
        name, _, text = item.strip().partition("=")
        if name == "t":
            try:
                timestamp = int(text)
            except ValueError:
                raise SignatureError(
                    f"invalid timestamp {text[:20]!r} in Stripe-Signature header"
                ) from None
        elif name == "v1":
            signatures.append(text)
    if timestamp is None:
        raise SignatureError("Stripe-Signature header has no t= timestamp")
    if not signatures:
        raise SignatureError("Stripe-Signature header has no v1= signature")
    return timestamp, signatures


def _resource(event: dict[str, Any]) -> str | None:
    """Return ``object:id`` of the event's ``data.object``; None without a scalar id."""
    data = event.get("data")
    target = data.get("object") if isinstance(data, dict) else None
    if not isinstance(target, dict):
        return None
    target_id = target.get("id")
    if isinstance(target_id, bool) or not isinstance(target_id, (str, int)):
        return None
    kind = target.get("object")
    return f"{kind if isinstance(kind, str) else 'object'}:{target_id}"


def _last_id(data: list[Any]) -> str | None:
    """Return the id of the page's last item that has a string one."""
    for item in reversed(data):
        event_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(event_id, str) and event_id:
            return event_id
    return None


def _raise_for_error_object(body: dict[str, Any]) -> None:
    """Raise ResponseError for a 2xx response whose body is a Stripe error object."""
    error = body.get("error")
    if error is None or "data" in body:
        return
    message = error.get("message") if isinstance(error, dict) else error
    raise ResponseError(f"the response is an error object: {str(message)[:200]!r}")
