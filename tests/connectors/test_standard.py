"""Tests of the Standard Webhooks connector: webhooks, keys, config and polling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.standard import StandardWebhooksConnector
from syncd import config
from syncd.errors import ConfigError, PayloadError, SignatureError, TimestampError
from syncd.models import Event
from syncd.reconcile import ProviderRunner
from syncd.store import Store, record_events

API = "http://127.0.0.1:9"
NAME = "hooks"
T0 = 1714557600  # 2024-05-01T10:00:00Z
EXAMPLE_SECRET = "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA="
EXAMPLE_BODY = b'{"type":"order.created","id":"ord_1"}'
EXAMPLE_HEADERS = {
    "webhook-id": "msg_2Lf0Test",
    "webhook-timestamp": str(T0),
    "webhook-signature": "v1,c7+uR+VnNXN7KlfhlnIBnMOD5oOVo8BURimdJE8O0zI=",
}
LISTING = {
    "path": "/v1/events",
    "items": "data",
    "id_field": "id",
    "time_field": "created_at",
    "cursor": {"kind": "timestamp", "param": "after"},
    "pagination": {"kind": "none"},
}


def table(**overrides: Any) -> dict[str, Any]:
    """Return a ``standard-webhooks`` provider table with overrides."""
    settings: dict[str, Any] = {
        "connector": "standard-webhooks",
        "webhook_secret": EXAMPLE_SECRET,
        "signature_tolerance": "300s",
    }
    settings.update(overrides)
    return settings


def make_connector(**overrides: Any) -> StandardWebhooksConnector:
    parsed = config.parse({"providers": {NAME: table(**overrides)}})
    return StandardWebhooksConnector(parsed.providers[NAME])


def test_example_verifies_and_parses() -> None:
    """The example request verifies and becomes one event keyed by webhook-id."""
    connector = make_connector()
    connector.verify_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY, T0)
    (record,) = connector.parse_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY)

    assert record.key == "msg_2Lf0Test"
    assert record.type == "order.created"
    assert record.occurred_at == datetime.fromtimestamp(T0, UTC)
    assert record.payload == EXAMPLE_BODY.decode()


def test_example_stale_timestamp() -> None:
    """The example request checked 301 s late raises TimestampError."""
    connector = make_connector()
    with pytest.raises(TimestampError, match=r"outside the \d+s tolerance"):
        connector.verify_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY, T0 + 301)


def test_tolerance_from_provider() -> None:
    """signature_tolerance of the provider sets the verifier's tolerance."""
    connector = make_connector(signature_tolerance="10m")
    assert connector.verify_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY, T0 + 599) is None


def load_problems(settings: dict) -> list[str]:
    """Return the problems config.parse lists for one provider table."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"providers": {NAME: settings}})
    return caught.value.problems


def test_example_bad_secret_at_load() -> None:
    """config.parse rejects ``whsec_!!!!`` naming the provider and the key."""
    problems = load_problems(table(webhook_secret="whsec_!!!!"))
    assert len(problems) == 1
    assert problems[0].startswith(f"providers.{NAME}.webhook_secret: ")
    assert "not valid base64" in problems[0]
    assert "!!!!" not in problems[0]


def test_no_secret_no_listing() -> None:
    """A provider with neither webhook_secret nor listing is a problem."""
    settings = table()
    del settings["webhook_secret"]
    (problem,) = load_problems(settings)
    assert problem.startswith(f"providers.{NAME}.webhook_secret: ")


def test_listing_needs_api_base_url() -> None:
    """A listing without api_base_url is a problem at that key."""
    (problem,) = load_problems(table(listing=LISTING))
    assert problem.startswith(f"providers.{NAME}.api_base_url: ")


def test_unknown_key_listed() -> None:
    """An unknown key, also inside listing, is listed with its key path."""
    listing = dict(LISTING, itmes="data")
    with pytest.raises(ConfigError) as caught:
        config.parse({"providers": {NAME: table(key_feild="id", listing=listing)}})
    problems = caught.value.problems
    assert (
        f"providers.{NAME}.key_feild: unknown key; remove it or check its spelling"
        in (problems)
    )
    assert (
        f"providers.{NAME}.listing.itmes: unknown key; remove it or check its spelling"
    ) in problems


def test_key_field_from_payload() -> None:
    """key_field makes a payload field the dedup key."""
    (record,) = make_connector(key_field="id").parse_webhook(
        EXAMPLE_HEADERS, EXAMPLE_BODY
    )
    assert record.key == "ord_1"


def test_key_field_missing() -> None:
    """A payload without key_field raises PayloadError."""
    connector = make_connector(key_field="data.id")
    with pytest.raises(PayloadError, match="'data.id'"):
        connector.parse_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY)


def test_type_field_dotted() -> None:
    """type_field may name a nested field."""
    body = b'{"event": {"name": "invoice.sent"}}'
    (record,) = make_connector(type_field="event.name").parse_webhook(
        EXAMPLE_HEADERS, body
    )
    assert record.type == "invoice.sent"


def test_type_missing() -> None:
    """A payload without a string type raises PayloadError."""
    with pytest.raises(PayloadError, match="no string 'type'"):
        make_connector().parse_webhook(EXAMPLE_HEADERS, b'{"id": "ord_1"}')


def test_time_field_milliseconds() -> None:
    """time_field reads occurred_at from the payload, milliseconds kept."""
    body = b'{"type": "order.created", "timestamp": "2022-01-28T10:30:33.614Z"}'
    (record,) = make_connector(time_field="timestamp").parse_webhook(
        EXAMPLE_HEADERS, body
    )
    assert record.occurred_at == datetime(2022, 1, 28, 10, 30, 33, 614000, tzinfo=UTC)


def test_time_field_invalid() -> None:
    """A time_field value that is not a time raises PayloadError."""
    body = b'{"type": "order.created", "timestamp": "soon"}'
    with pytest.raises(PayloadError, match="'timestamp' is not a time"):
        make_connector(time_field="timestamp").parse_webhook(EXAMPLE_HEADERS, body)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_body_not_object(body: bytes) -> None:
    """A body that is not a UTF-8 JSON object raises PayloadError."""
    with pytest.raises(PayloadError):
        make_connector().parse_webhook(EXAMPLE_HEADERS, body)


def test_webhooks_only_no_listings() -> None:
    """Without a listing table the provider has no listings to poll."""
    assert make_connector().listings() == []


def test_listing_only_rejects_webhooks() -> None:
    """Without webhook_secret a listing-only provider rejects webhooks."""
    settings = table(api_base_url=API, listing=LISTING)
    del settings["webhook_secret"]
    parsed = config.parse({"providers": {NAME: settings}})
    connector = StandardWebhooksConnector(parsed.providers[NAME])
    with pytest.raises(SignatureError, match="webhooks are off"):
        connector.verify_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY, T0)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """Return a client for an events API that lists ord_1 and ord_2."""
    body = {
        "data": [
            {
                "id": "ord_1",
                "type": "order.created",
                "created_at": "2024-05-01T10:00:00Z",
            },
            {"id": "ord_2", "type": "order.paid", "created_at": "2024-05-01T10:00:05Z"},
        ]
    }
    router = respx.MockRouter(base_url=API, assert_all_called=False)
    router.get("/v1/events").mock(return_value=httpx.Response(200, json=body))
    with httpx.Client(transport=httpx.MockTransport(router.handler)) as opened:
        yield opened


def test_webhook_and_listing_agree(store: Store, client: httpx.Client) -> None:
    """A webhook keyed by key_field and its polled copy are one log entry."""
    connector = make_connector(
        key_field="id",
        api_base_url=API,
        start_from="2024-05-01T09:00:00Z",
        listing=LISTING,
    )
    records = connector.parse_webhook(EXAMPLE_HEADERS, EXAMPLE_BODY)
    with store.session() as session:
        record_events(session, NAME, "webhook", records, datetime.now(UTC))
    sleeps: list[float] = []
    runner = ProviderRunner(
        store, connector, client, clock=lambda: T0 + 60.0, sleep=sleeps.append
    )
    (report,) = runner.poll()

    with store.session() as session:
        keys = Counter(session.execute(select(Event.key)).scalars())
    assert report.ok
    assert report.new == 1
    assert report.already == 1
    assert keys == Counter({"ord_1": 1, "ord_2": 1})
