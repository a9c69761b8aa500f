"""Tests of the Stripe connector: signatures, webhook bodies and list pages."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.base import PageRequest, Window
from connectors.stripe import StripeConnector
from syncd import config
from syncd.errors import PayloadError, ResponseError, SignatureError, TimestampError

FIXTURES = Path(__file__).parent / "fixtures" / "stripe"
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text("utf-8"))
STRIPE_VECTORS = [v for v in VECTORS["vectors"] if v["scheme"] == "stripe-v1"]

# The malformed-header vectors have no clock because they must fail before
# any timestamp is compared. They use the clock of the valid vector.
DEFAULT_VERIFY = {"now": 1533204720, "tolerance_s": 300}

T0 = 1714557600  # 2024-05-01T10:00:00Z
RAW_SECRET = "whsec_test_stripe_123"
RAW_BODY = (
    '{\n  "id": "evt_1Test",\n  "object": "event",\n  "data": {"name": "Zoë"}\n}\n'
).encode()
RAW_SIGNATURE = "a7abbd1a420ad91950a185fa44fe4ced9bce1e3748311942cf63a9e4cc557468"
LOOPBACK_API = "http://127.0.0.1:9"


def make_connector(
    secret: str | None = RAW_SECRET, tolerance: str = "300s"
) -> StripeConnector:
    table: dict[str, Any] = {
        "connector": "stripe",
        "api_base_url": LOOPBACK_API,
        "signature_tolerance": tolerance,
    }
    if secret is not None:
        table["webhook_secret"] = secret
    parsed = config.parse({"providers": {"payments": table}})
    return StripeConnector(parsed.providers["payments"])


def sign(body: bytes, timestamp: int, secret: str = RAW_SECRET) -> str:
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(body: bytes, timestamp: int) -> dict[str, str]:
    return {"stripe-signature": f"t={timestamp},v1={sign(body, timestamp)}"}


def stripe_event(**fields: Any) -> dict[str, Any]:
    event = {
        "id": "evt_3",
        "object": "event",
        "type": "invoice.paid",
        "created": T0,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }
    event.update(fields)
    return event


def list_response(
    body: bytes, content_type: str = "application/json"
) -> httpx.Response:
    request = httpx.Request("GET", f"{LOOPBACK_API}/v1/events")
    return httpx.Response(
        200, content=body, headers={"content-type": content_type}, request=request
    )


def first_page_request() -> PageRequest:
    window = Window(
        since=datetime(2018, 1, 1, tzinfo=UTC), until=datetime(2019, 1, 1, tzinfo=UTC)
    )
    return make_connector().first_request("events", window)


# Signature vectors


def test_vectors_include_valid_and_invalid() -> None:
    """The copied vector file contains both valid and invalid Stripe vectors."""
    expected = {vector["expected"] for vector in STRIPE_VECTORS}
    assert expected == {"valid", "invalid"}


@pytest.mark.parametrize("vector", STRIPE_VECTORS, ids=lambda v: v["id"])
def test_verify_vector(vector: dict[str, Any]) -> None:
    """Each Stripe vector verifies or fails as its ``expected`` field requires."""
    settings = vector.get("verify", DEFAULT_VERIFY)
    connector = make_connector(vector["secret"], f"{settings['tolerance_s']}s")
    headers = {name.lower(): value for name, value in vector["headers"].items()}
    body = vector["body"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == vector["body_sha256"]

    if vector["expected"] == "valid":
        connector.verify_webhook(headers, body, settings["now"])
    else:
        with pytest.raises(SignatureError):
            connector.verify_webhook(headers, body, settings["now"])


def test_verify_vector_body_file() -> None:
    """The valid vector's body is the copied stripe-dotnet resource file."""
    vector = next(v for v in STRIPE_VECTORS if v["expected"] == "valid")
    body_file = FIXTURES.parent / vector["body_file"]
    assert body_file.read_bytes() == vector["body"].encode("utf-8")


def test_verify_outdated_vector_timestamp_error() -> None:
    """The stripe-dotnet outdated-timestamp vector fails on the timestamp."""
    vector = next(
        v for v in STRIPE_VECTORS if v["id"] == "stripe-dotnet-outdated-timestamp"
    )
    settings = vector["verify"]
    connector = make_connector(vector["secret"], f"{settings['tolerance_s']}s")
    headers = {"stripe-signature": vector["headers"]["Stripe-Signature"]}
    with pytest.raises(TimestampError):
        connector.verify_webhook(headers, vector["body"].encode(), settings["now"])


# The raw bytes are verified, not re-serialised JSON


def test_verify_raw_body_accepted() -> None:
    """A body with 'Zoë' verifies under its known header 10 s after signing."""
    headers = {"stripe-signature": f"t={T0},v1={RAW_SIGNATURE}"}
    make_connector().verify_webhook(headers, RAW_BODY, T0 + 10)


def test_verify_raw_body_signature() -> None:
    """The known signature is HMAC-SHA256 over the raw UTF-8 bytes."""
    assert sign(RAW_BODY, T0) == RAW_SIGNATURE


def test_verify_changed_byte_rejected() -> None:
    """Changing the last byte of 'ë' in the signed body is rejected."""
    changed = RAW_BODY.replace("ë".encode(), b"\xc3\xac")
    assert len(changed) == len(RAW_BODY)
    headers = {"stripe-signature": f"t={T0},v1={RAW_SIGNATURE}"}
    with pytest.raises(SignatureError):
        make_connector().verify_webhook(headers, changed, T0 + 10)


@pytest.mark.parametrize("position", range(len(RAW_BODY)))
def test_verify_flipped_bit_rejected(position: int) -> None:
    """Flipping one bit at any position of the signed body is rejected."""
    body = bytearray(RAW_BODY)
    body[position] ^= 0x01
    headers = {"stripe-signature": f"t={T0},v1={RAW_SIGNATURE}"}
    with pytest.raises(SignatureError):
        make_connector().verify_webhook(headers, bytes(body), T0 + 10)


def test_verify_reserialized_json_rejected() -> None:
    """A body re-serialised from the same JSON value no longer verifies."""
    reserialized = json.dumps(json.loads(RAW_BODY)).encode()
    headers = {"stripe-signature": f"t={T0},v1={RAW_SIGNATURE}"}
    with pytest.raises(SignatureError):
        make_connector().verify_webhook(headers, reserialized, T0 + 10)


# Header forms


def test_verify_second_v1_matches() -> None:
    """A header whose second v1 value matches is accepted."""
    wrong = sign(RAW_BODY, T0, secret="whsec_other")
    header = f"t={T0},v1={wrong},v1={RAW_SIGNATURE}"
    make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)


def test_verify_no_v1_matches() -> None:
    """A header whose v1 values all belong to other secrets is rejected."""
    first = sign(RAW_BODY, T0, secret="whsec_other")
    second = sign(RAW_BODY, T0, secret="whsec_third")
    header = f"t={T0},v1={first},v1={second}"
    with pytest.raises(SignatureError):
        make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)


def test_verify_v0_only_rejected() -> None:
    """A header with only a v0 value is rejected, even one that matches."""
    header = f"t={T0},v0={RAW_SIGNATURE}"
    with pytest.raises(SignatureError):
        make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)


def test_verify_missing_header() -> None:
    """A request without a Stripe-Signature header is rejected."""
    with pytest.raises(SignatureError) as caught:
        make_connector().verify_webhook({}, RAW_BODY, T0)
    assert not isinstance(caught.value, TimestampError)
    assert "missing Stripe-Signature" in str(caught.value)


def test_verify_empty_header() -> None:
    """An empty Stripe-Signature header is rejected."""
    with pytest.raises(SignatureError):
        make_connector().verify_webhook({"stripe-signature": ""}, RAW_BODY, T0)


def test_verify_missing_timestamp() -> None:
    """A header without t= is rejected as a signature error."""
    header = f"v1={RAW_SIGNATURE}"
    with pytest.raises(SignatureError) as caught:
        make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)
    assert not isinstance(caught.value, TimestampError)
    assert "t=" in str(caught.value)


@pytest.mark.parametrize("timestamp", ["abc", "1714557600.5", "", "1e9", "0x66"])
def test_verify_non_integer_timestamp(timestamp: str) -> None:
    """A t= value that is not an integer is rejected as a signature error."""
    header = f"t={timestamp},v1={RAW_SIGNATURE}"
    with pytest.raises(SignatureError) as caught:
        make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)
    assert not isinstance(caught.value, TimestampError)


def test_verify_webhooks_off() -> None:
    """A provider without a webhook_secret rejects every webhook."""
    headers = {"stripe-signature": f"t={T0},v1={RAW_SIGNATURE}"}
    with pytest.raises(SignatureError):
        make_connector(secret=None).verify_webhook(headers, RAW_BODY, T0)


def test_verify_error_hides_secret() -> None:
    """A rejection message never contains the webhook secret."""
    header = f"t={T0},v1={'0' * 64}"
    with pytest.raises(SignatureError) as caught:
        make_connector().verify_webhook({"stripe-signature": header}, RAW_BODY, T0)
    assert RAW_SECRET not in str(caught.value)


# Timestamp tolerance


@pytest.mark.parametrize("offset", [-299, 299, -300, 300, 0])
def test_tolerance_inside_accepted(offset: int) -> None:
    """A signed timestamp within 300 s of the clock is accepted."""
    timestamp = T0 + offset
    headers = signed_headers(RAW_BODY, timestamp)
    make_connector(tolerance="300s").verify_webhook(headers, RAW_BODY, T0)


@pytest.mark.parametrize("offset", [-301, 301])
def test_tolerance_outside_rejected(offset: int) -> None:
    """A signed timestamp 301 s from the clock raises TimestampError."""
    timestamp = T0 + offset
    headers = signed_headers(RAW_BODY, timestamp)
    with pytest.raises(TimestampError) as caught:
        make_connector(tolerance="300s").verify_webhook(headers, RAW_BODY, T0)
    assert "outside the 300s tolerance" in str(caught.value)


def test_tolerance_message_direction() -> None:
    """The timestamp error says whether the timestamp is behind or ahead."""
    old = signed_headers(RAW_BODY, T0 - 400)
    new = signed_headers(RAW_BODY, T0 + 400)
    connector = make_connector(tolerance="300s")
    with pytest.raises(TimestampError) as behind:
        connector.verify_webhook(old, RAW_BODY, T0)
    with pytest.raises(TimestampError) as ahead:
        connector.verify_webhook(new, RAW_BODY, T0)
    assert "400s behind this host's clock" in str(behind.value)
    assert "400s ahead of this host's clock" in str(ahead.value)


def test_tolerance_message_not_signature() -> None:
    """A stale timestamp is not reported as a bad signature."""
    headers = signed_headers(RAW_BODY, T0 - 301)
    with pytest.raises(TimestampError) as caught:
        make_connector().verify_webhook(headers, RAW_BODY, T0)
    assert "matches" not in str(caught.value)


def test_tolerance_from_provider_wider() -> None:
    """A 10-minute signature_tolerance accepts a timestamp 301 s old."""
    headers = signed_headers(RAW_BODY, T0 - 301)
    make_connector(tolerance="10m").verify_webhook(headers, RAW_BODY, T0)


def test_tolerance_from_provider_narrower() -> None:
    """A 30-second signature_tolerance rejects a timestamp 31 s old."""
    headers = signed_headers(RAW_BODY, T0 - 31)
    with pytest.raises(TimestampError) as caught:
        make_connector(tolerance="30s").verify_webhook(headers, RAW_BODY, T0)
    assert "outside the 30s tolerance" in str(caught.value)


@pytest.mark.parametrize(
    "timestamp", [10**30, 10**400, T0 * 1000, -T0], ids=["e30", "e400", "ms", "neg"]
)
def test_tolerance_implausible_timestamp(timestamp: int) -> None:
    """A timestamp decades from the clock is called implausible, not aged."""
    headers = signed_headers(RAW_BODY, timestamp)
    with pytest.raises(TimestampError) as caught:
        make_connector().verify_webhook(headers, RAW_BODY, T0)
    message = str(caught.value)
    assert "is not a plausible Unix time in seconds" in message
    assert "signs with Unix time in seconds" in message
    assert "this host's clock is right" in message
    assert "s ahead of" not in message
    assert "s behind" not in message
    assert RAW_SECRET not in message


def test_tolerance_implausible_timestamp_shortened() -> None:
    """A very long implausible timestamp is shortened in the message."""
    headers = signed_headers(RAW_BODY, 10**30)
    with pytest.raises(TimestampError) as caught:
        make_connector().verify_webhook(headers, RAW_BODY, T0)
    message = str(caught.value)
    assert str(10**30) not in message
    assert "10000000000000000000... (31 digits)" in message


# parse_webhook


def test_parse_webhook_valid_event() -> None:
    """A valid event gives one record keyed by its event id."""
    body = (FIXTURES / "stripe-dotnet" / "event_test_signature.json").read_bytes()
    records = make_connector().parse_webhook({}, body)
    assert len(records) == 1
    record = records[0]
    assert record.key == "evt_123"
    assert record.type == "customer.created"
    assert record.occurred_at == datetime.fromtimestamp(1533204620, UTC)
    assert record.occurred_at.tzinfo is not None
    assert record.payload == body.decode("utf-8")
    assert record.resource == "customer:cus_123"


def test_parse_webhook_keeps_non_ascii() -> None:
    """The payload keeps 'ë' and the body's exact text."""
    body = json.dumps(stripe_event(note="Zoë"), ensure_ascii=False).encode()
    record = make_connector().parse_webhook({}, body)[0]
    assert record.payload == body.decode("utf-8")
    assert "Zoë" in record.payload


@pytest.mark.parametrize(
    ("target", "resource"),
    [
        ({"id": "in_1", "object": "invoice"}, "invoice:in_1"),
        ({"id": 42}, "object:42"),
        ({"id": {"x": 1}, "object": "invoice"}, None),
        ({"id": True, "object": "invoice"}, None),
        ({"id": "in_1", "object": ["invoice"]}, "object:in_1"),
        ({"object": "invoice"}, None),
        ("in_1", None),
    ],
)
def test_parse_webhook_resource(target: Any, resource: str | None) -> None:
    """The resource is built only from a string or integer data.object.id."""
    body = json.dumps(stripe_event(data={"object": target})).encode()
    record = make_connector().parse_webhook({}, body)[0]
    assert record.resource == resource


@pytest.mark.parametrize("event_id", ["", "  ", "\t"])
def test_parse_webhook_blank_id(event_id: str) -> None:
    body = json.dumps(stripe_event(id=event_id)).encode()
    with pytest.raises(PayloadError, match="no string 'id'"):
        make_connector().parse_webhook({}, body)


@pytest.mark.parametrize("body", [b"not json", b"", b"{", b"\xff\xfe{}"])
def test_parse_webhook_not_json(body: bytes) -> None:
    """A body that is not JSON raises PayloadError."""
    with pytest.raises(PayloadError):
        make_connector().parse_webhook({}, body)


def test_parse_webhook_huge_integer() -> None:
    """A number over Python's 4300-digit integer limit raises PayloadError."""
    body = b'{"id": "evt_1", "amount": 1' + b"0" * 5000 + b"}"
    with pytest.raises(PayloadError):
        make_connector().parse_webhook({}, body)


def test_parse_webhook_deep_nesting() -> None:
    """JSON nested deeper than the recursion limit raises PayloadError."""
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(PayloadError):
        make_connector().parse_webhook({}, body)


def test_parse_webhook_json_array() -> None:
    """A JSON array raises PayloadError asking for an event object."""
    body = json.dumps([stripe_event()]).encode()
    with pytest.raises(PayloadError) as caught:
        make_connector().parse_webhook({}, body)
    assert "event object" in str(caught.value)


@pytest.mark.parametrize("field", ["id", "type", "created"])
def test_parse_webhook_missing_field(field: str) -> None:
    """An event without id, type or created raises PayloadError naming it."""
    event = stripe_event()
    del event[field]
    with pytest.raises(PayloadError) as caught:
        make_connector().parse_webhook({}, json.dumps(event).encode())
    assert f"'{field}'" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 3),
        ("id", ""),
        ("type", None),
        ("created", "1714557600"),
        ("created", 1714557600.5),
        ("created", True),
    ],
)
def test_parse_webhook_wrong_field_type(field: str, value: Any) -> None:
    """An event whose id, type or created has the wrong type raises PayloadError."""
    event = stripe_event(**{field: value})
    with pytest.raises(PayloadError) as caught:
        make_connector().parse_webhook({}, json.dumps(event).encode())
    assert f"'{field}'" in str(caught.value)


def test_parse_webhook_not_event_object() -> None:
    """A JSON object that is not a Stripe event raises PayloadError."""
    event = stripe_event(object="customer")
    with pytest.raises(PayloadError):
        make_connector().parse_webhook({}, json.dumps(event).encode())


@pytest.mark.parametrize("data", [[1], "text", 7, {"object": []}, None])
def test_parse_webhook_odd_data(data: Any) -> None:
    """An event whose 'data' is not an object still gives its record."""
    body = json.dumps(stripe_event(data=data)).encode()
    records = make_connector().parse_webhook({}, body)
    assert [record.key for record in records] == ["evt_3"]
    assert records[0].resource is None


@pytest.mark.parametrize("created", [10**20, -(10**20), 10**12])
def test_parse_webhook_created_out_of_range(created: int) -> None:
    """A 'created' that is no representable time raises PayloadError naming it."""
    body = json.dumps(stripe_event(created=created)).encode()
    with pytest.raises(PayloadError) as caught:
        make_connector().parse_webhook({}, body)
    assert "'created'" in str(caught.value)


# parse_page


def test_parse_page_first() -> None:
    """A page with has_more gives its records and a starting_after request."""
    request = first_page_request()
    body = (FIXTURES / "derived" / "events_list.page1.derived.json").read_bytes()
    page = make_connector().parse_page("events", request, list_response(body))
    assert [r.key for r in page.records] == [
        "evt_1DHsSdKCFFPkgtRhy4YMdffC",
        "evt_123",
    ]
    assert [r.type for r in page.records] == ["customer.updated", "plan.created"]
    assert page.next is not None
    assert page.next.url == "/v1/events"
    assert ("starting_after", "evt_123") in page.next.params
    assert set(request.params) <= set(page.next.params)


def test_parse_page_record_fields() -> None:
    """Each listed record has occurred_at from created and the item's JSON."""
    body = (FIXTURES / "derived" / "events_list.page1.derived.json").read_bytes()
    items = json.loads(body)["data"]
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    for record, item in zip(page.records, items, strict=True):
        assert record.occurred_at == datetime.fromtimestamp(item["created"], UTC)
        assert json.loads(record.payload) == item


def test_parse_page_last() -> None:
    """A page without has_more ends the listing."""
    connector = make_connector()
    page1 = (FIXTURES / "derived" / "events_list.page1.derived.json").read_bytes()
    page2 = (FIXTURES / "derived" / "events_list.page2.derived.json").read_bytes()
    first = connector.parse_page("events", first_page_request(), list_response(page1))
    assert first.next is not None
    last = connector.parse_page("events", first.next, list_response(page2))
    assert [r.key for r in last.records] == ["evt_1Pgc76B7WZ01zgkWwyRHS12y"]
    assert last.next is None


def test_parse_page_replaces_starting_after() -> None:
    """The next request carries exactly one starting_after, the last id."""
    connector = make_connector()
    page1 = (FIXTURES / "derived" / "events_list.page1.derived.json").read_bytes()
    request = PageRequest(
        "/v1/events", (("limit", "2"), ("starting_after", "evt_older"))
    )
    page = connector.parse_page("events", request, list_response(page1))
    assert page.next is not None
    cursors = [value for name, value in page.next.params if name == "starting_after"]
    assert cursors == ["evt_123"]


def test_parse_page_has_more_empty() -> None:
    """A page with has_more but no data raises ResponseError."""
    body = json.dumps(
        {"object": "list", "data": [], "has_more": True, "url": "/v1/events"}
    ).encode()
    with pytest.raises(ResponseError) as caught:
        make_connector().parse_page("events", first_page_request(), list_response(body))
    assert "'has_more'" in str(caught.value)


def test_parse_page_empty_last() -> None:
    """An empty page without has_more ends the listing with no records."""
    body = json.dumps(
        {"object": "list", "data": [], "has_more": False, "url": "/v1/events"}
    ).encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert page.records == []
    assert page.next is None


def test_parse_page_html() -> None:
    """An HTML body raises ResponseError naming the content type."""
    body = b"<html><body>502 Bad Gateway</body></html>"
    response = list_response(body, content_type="text/html")
    with pytest.raises(ResponseError) as caught:
        make_connector().parse_page("events", first_page_request(), response)
    assert "text/html" in str(caught.value)


def test_parse_page_huge_integer() -> None:
    """A listed number over the 4300-digit integer limit raises ResponseError."""
    body = b'{"object": "list", "has_more": false, "data": [1' + b"0" * 5000 + b"]}"
    with pytest.raises(ResponseError):
        make_connector().parse_page("events", first_page_request(), list_response(body))


def test_parse_page_deep_nesting() -> None:
    """A response nested deeper than the recursion limit raises ResponseError."""
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ResponseError):
        make_connector().parse_page("events", first_page_request(), list_response(body))


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        {"object": "event", "data": [], "has_more": False},
        {"object": "list", "data": {}, "has_more": False},
        {"object": "list", "data": [], "has_more": "false"},
        {"object": "list", "data": []},
    ],
)
def test_parse_page_bad_envelope(envelope: Any) -> None:
    """A JSON body that is not a list object raises ResponseError."""
    body = json.dumps(envelope).encode()
    with pytest.raises(ResponseError):
        make_connector().parse_page("events", first_page_request(), list_response(body))


def test_parse_page_invalid_item() -> None:
    """A listed item without an id is set aside with a reason naming the field."""
    item = stripe_event()
    del item["id"]
    body = json.dumps(
        {"object": "list", "data": [item], "has_more": False, "url": "/v1/events"}
    ).encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert page.records == []
    assert len(page.rejected) == 1
    assert "'id'" in page.rejected[0][1]


def test_parse_page_odd_data_item() -> None:
    """A listed event whose 'data' is an array still gives its record."""
    item = stripe_event(data=[1, 2])
    body = json.dumps(
        {"object": "list", "data": [item], "has_more": False, "url": "/v1/events"}
    ).encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert [record.key for record in page.records] == ["evt_3"]


def test_parse_page_payload_is_item_text() -> None:
    """A listed event's payload is its text in the page, spacing and digits kept."""
    item = (
        '{ "id": "evt_3", "object": "event", "type": "invoice.paid", '
        f'"created": {T0}, "amount": 12345678901234567890123, "rate": 0.10, '
        '"name": "Zo\\u00eb", "data": {"object": {"id": "in_1"}} }'
    )
    body = f'{{"object": "list", "data": [{item}], "has_more": false}}'.encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert [record.payload for record in page.records] == [item]


def test_parse_page_repeated_key_serialised() -> None:
    """An event that repeats a key is stored as read: one key, the last value."""
    item = (
        '{"id": "evt_3", "object": "event", "type": "a", "type": "b", '
        f'"created": {T0}}}'
    )
    body = f'{{"object": "list", "data": [{item}], "has_more": false}}'.encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert [record.type for record in page.records] == ["b"]
    assert json.loads(page.records[0].payload)["type"] == "b"
    assert page.records[0].payload.count('"type"') == 1


def test_parse_page_nan_item_set_aside() -> None:
    """An event holding NaN is set aside; the next event is still read."""
    bad = (
        f'{{"id": "evt_1", "object": "event", "type": "a", "created": {T0}, '
        '"x": NaN}'
    )
    good = json.dumps(stripe_event())
    body = f'{{"object": "list", "data": [{bad}, {good}], "has_more": false}}'.encode()
    page = make_connector().parse_page(
        "events", first_page_request(), list_response(body)
    )
    assert [record.key for record in page.records] == ["evt_3"]
    assert len(page.rejected) == 1
    assert "NaN" in page.rejected[0][0]
