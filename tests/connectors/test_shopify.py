"""Tests of the Shopify connector: signatures, big ids, keys, listings, call limits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.base import PageRequest, Window
from connectors.shopify import ShopifyConnector
from syncd import config
from syncd.errors import ConfigError, PayloadError, ResponseError, SignatureError
from syncd.models import Event
from syncd.reconcile import ProviderRunner
from syncd.store import Store, record_events

FIXTURES = Path(__file__).parents[1] / "fixtures" / "shopify"
SAMPLES = FIXTURES / "shopify_python_api"
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text("utf-8"))

# respx responds to every request to this host, so nothing leaves the process.
SHOP = "https://example-shop.myshopify.com"
TOKEN = "shpat_test_token"
T0 = 1714557600  # 2024-05-01T10:00:00Z
EVENT_ID = "98880550-7158-44d4-b7cd-2c97c8a091b5"

FC02_BODY = b'{"id":820982911946154508,"email":"jon@example.com"}'
FC02_SECRET = "shpss_test_secret"
FC02_SIGNATURE = "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc="


def make_connector(**table: Any) -> ShopifyConnector:
    settings: dict[str, Any] = {
        "connector": "shopify",
        "api_base_url": SHOP,
        "api_version": "2024-04",
        "api_token": TOKEN,
        "webhook_secret": FC02_SECRET,
    }
    settings.update(table)
    settings = {key: value for key, value in settings.items() if value is not None}
    parsed = config.parse({"providers": {"shop": settings}})
    return ShopifyConnector(parsed.providers["shop"])


def sign(body: bytes, secret: str = FC02_SECRET) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def webhook_headers(topic: str, body: bytes, **extra: str) -> dict[str, str]:
    headers = {
        "x-shopify-hmac-sha256": sign(body),
        "x-shopify-topic": topic,
        "x-shopify-event-id": EVENT_ID,
        "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "x-shopify-triggered-at": "2024-05-01T10:00:00.123456789Z",
        "x-shopify-shop-domain": "example-shop.myshopify.com",
    }
    headers.update(extra)
    return headers


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / f"{name}.json").read_text("utf-8"))


def page_response(
    body: bytes, headers: dict[str, str] | None = None, path: str = "/"
) -> httpx.Response:
    return httpx.Response(
        200,
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        request=httpx.Request("GET", f"{SHOP}{path}"),
    )


def parse_listed(connector: ShopifyConnector, listing: str, body: bytes) -> Any:
    request = connector.first_request(listing, Window(since=None, until=None))
    return connector.parse_page(listing, request, page_response(body))


def logged(store: Store) -> list[Event]:
    with store.session() as session:
        return list(session.execute(select(Event)).scalars())


# Signatures


def test_vectors_include_valid_and_invalid() -> None:
    """The copied vector file contains both valid and invalid Shopify vectors."""
    expected = {vector["expected"] for vector in VECTORS["vectors"]}
    assert expected == {"valid", "invalid"}


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["id"])
def test_verify_vector(vector: dict[str, Any]) -> None:
    """Each Shopify vector verifies or fails as its ``expected`` field specifies."""
    connector = make_connector(webhook_secret=vector["secret"])
    headers = {name.lower(): value for name, value in vector["headers"].items()}
    body = vector["body"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == vector["body_sha256"]

    if vector["expected"] == "valid":
        connector.verify_webhook(headers, body, T0)
    else:
        with pytest.raises(SignatureError):
            connector.verify_webhook(headers, body, T0)


def test_verify_big_id_body_base64() -> None:
    """The big-id body verifies against its base64 HMAC header."""
    headers = {"x-shopify-hmac-sha256": FC02_SIGNATURE}
    make_connector().verify_webhook(headers, FC02_BODY, T0)


def test_verify_rejects_hex_digest() -> None:
    """The same digest written in hex is rejected."""
    hex_digest = base64.b64decode(FC02_SIGNATURE).hex()
    with pytest.raises(SignatureError, match="does not match"):
        make_connector().verify_webhook(
            {"x-shopify-hmac-sha256": hex_digest}, FC02_BODY, T0
        )


def test_verify_missing_header_rejected() -> None:
    """A request without X-Shopify-Hmac-Sha256 is rejected, naming the header."""
    with pytest.raises(SignatureError, match="missing X-Shopify-Hmac-Sha256"):
        make_connector().verify_webhook({}, FC02_BODY, T0)


def test_verify_webhooks_off_rejected() -> None:
    """A provider without webhook_secret rejects every webhook."""
    connector = make_connector(webhook_secret=None)
    with pytest.raises(SignatureError, match="webhooks are off"):
        connector.verify_webhook(
            {"x-shopify-hmac-sha256": FC02_SIGNATURE}, FC02_BODY, T0
        )


# Big integer ids


def test_big_id_stored_exactly(store: Store) -> None:
    """The stored key and payload keep 820982911946154508 exactly."""
    connector = make_connector()
    headers = webhook_headers("customers/create", FC02_BODY)
    records = connector.parse_webhook(headers, FC02_BODY)
    with store.session() as session:
        record_events(session, "shop", "webhook", records, datetime.now(UTC))

    entry = logged(store)[0]
    assert entry.key == f"customer:820982911946154508:event:{EVENT_ID}"
    assert entry.payload == FC02_BODY.decode()
    assert json.loads(entry.payload)["id"] == 820982911946154508


def test_big_id_in_listing_exact() -> None:
    """A listed order's big id stays exact in its key and payload."""
    body = (
        b'{"orders": [{"id": 820982911946154508, "created_at": '
        b'"2024-05-01T06:00:00-04:00", "updated_at": "2024-05-01T06:00:01-04:00"}]}'
    )
    record = parse_listed(make_connector(), "orders", body).records[0]
    assert record.key == "order:820982911946154508:2024-05-01T10:00:01Z"
    assert '"id": 820982911946154508' in record.payload


def test_large_signed_order_stored_byte_exact(store: Store) -> None:
    """A 3 MB order with 2,000 line items verifies and is stored byte-exact."""
    order = sample("order")["order"]
    line = dict(order["line_items"][0], title="x" * 1400)
    order["line_items"] = [dict(line, id=10**17 + n) for n in range(2000)]
    body = json.dumps(order, indent=2).encode()
    assert len(body) > 3_000_000
    headers = webhook_headers("orders/updated", body)
    connector = make_connector()
    connector.verify_webhook(headers, body, T0)
    records = connector.parse_webhook(headers, body)
    with store.session() as session:
        record_events(session, "shop", "webhook", records, datetime.now(UTC))

    stored = logged(store)[0].payload.encode()
    assert hashlib.sha256(stored).hexdigest() == hashlib.sha256(body).hexdigest()


# Webhook bodies and keys


def test_order_webhook_matches_polled_order() -> None:
    """An orders/updated webhook and the listed order share one key."""
    connector = make_connector()
    body = json.dumps(sample("order")["order"]).encode()
    webhook = connector.parse_webhook(webhook_headers("orders/updated", body), body)
    orders = (SAMPLES / "orders.json").read_bytes()
    polled = parse_listed(connector, "orders", orders)
    assert [record.key for record in polled.records] == [webhook[0].key]


def test_order_create_webhook_key() -> None:
    """orders/create at a version has the entity-version key in UTC."""
    body = json.dumps(sample("order")["order"]).encode()
    headers = webhook_headers("orders/create", body)
    record = make_connector().parse_webhook(headers, body)[0]
    assert record.key == "order:450789469:2008-01-10T16:00:00Z"
    assert record.type == "orders/create"
    assert record.occurred_at == datetime(2008, 1, 10, 16, tzinfo=UTC)


def test_product_webhook_matches_polled_product() -> None:
    """A products/update webhook and the listed product share one key."""
    connector = make_connector()
    product = sample("product")["product"]
    body = json.dumps(product).encode()
    webhook = connector.parse_webhook(webhook_headers("products/update", body), body)
    listing = json.dumps({"products": [product]}).encode()
    polled = parse_listed(connector, "products", listing)
    assert polled.records[0].key == webhook[0].key


def test_webhook_payload_is_body_text() -> None:
    """A webhook's payload is the received body, byte for byte."""
    body = (SAMPLES / "order.json").read_bytes()
    order_body = json.dumps(json.loads(body)["order"], indent=4).encode()
    headers = webhook_headers("orders/updated", order_body)
    record = make_connector().parse_webhook(headers, order_body)[0]
    assert record.payload.encode() == order_body


def test_delete_webhook_key() -> None:
    """orders/delete has a deletion key and the Triggered-At time."""
    body = b'{"id":450789469}'
    record = make_connector().parse_webhook(
        webhook_headers("orders/delete", body), body
    )[0]
    assert record.key == "order:450789469:deleted"
    assert record.occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def test_body_without_id_uses_event_id() -> None:
    """A body without an id is keyed by X-Shopify-Event-Id."""
    body = b'{"inventory_item_id":271878346596884015,"available":3}'
    headers = webhook_headers("inventory_levels/update", body)
    record = make_connector().parse_webhook(headers, body)[0]
    assert record.key == f"event:{EVENT_ID}"


def test_webhook_id_replaces_missing_event_id() -> None:
    """Without X-Shopify-Event-Id, X-Shopify-Webhook-Id keys the event."""
    body = b'{"available":3}'
    headers = webhook_headers("inventory_levels/update", body)
    del headers["x-shopify-event-id"]
    record = make_connector().parse_webhook(headers, body)[0]
    assert record.key == "event:b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"


def test_missing_event_ids_rejected() -> None:
    """A body that needs an event id and has none is a PayloadError."""
    body = b'{"available":3}'
    headers = webhook_headers("inventory_levels/update", body)
    del headers["x-shopify-event-id"]
    del headers["x-shopify-webhook-id"]
    with pytest.raises(PayloadError, match="X-Shopify-Event-Id"):
        make_connector().parse_webhook(headers, body)


def test_missing_topic_rejected() -> None:
    """A webhook without X-Shopify-Topic is a PayloadError."""
    with pytest.raises(PayloadError, match="X-Shopify-Topic"):
        make_connector().parse_webhook({}, FC02_BODY)


def test_invalid_json_rejected() -> None:
    """A body that is not JSON is a PayloadError."""
    body = b"{not json"
    with pytest.raises(PayloadError, match="not valid JSON"):
        make_connector().parse_webhook(webhook_headers("orders/updated", body), body)


def test_other_shop_rejected() -> None:
    """A webhook from another shop that shares the app secret is rejected."""
    headers = webhook_headers(
        "orders/updated", FC02_BODY, **{"x-shopify-shop-domain": "other.myshopify.com"}
    )
    with pytest.raises(PayloadError, match="other.myshopify.com"):
        make_connector().parse_webhook(headers, FC02_BODY)


def test_polled_new_order_type() -> None:
    """A listed order whose created_at equals updated_at is typed orders/create."""
    page = parse_listed(
        make_connector(), "orders", (SAMPLES / "orders.json").read_bytes()
    )
    assert page.records[0].type == "orders/create"


def test_polled_changed_product_type() -> None:
    """A listed product changed after creation is typed products/update."""
    product = dict(sample("product")["product"], updated_at="2012-01-01T00:00:00Z")
    listing = json.dumps({"products": [product]}).encode()
    page = parse_listed(make_connector(), "products", listing)
    assert page.records[0].type == "products/update"


# Listings and requests


def test_first_request_for_orders() -> None:
    """The orders request lists every status by updated_at from before since."""
    window = Window(
        since=datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC), until=None
    )
    request = make_connector().first_request("orders", window)
    assert request.url == "/admin/api/2024-04/orders.json"
    assert request.params == (
        ("status", "any"),
        ("updated_at_min", "2024-05-01T09:59:59+00:00"),
        ("limit", "250"),
        ("order", "updated_at asc"),
    )


def test_first_request_for_products() -> None:
    """The products request has no status filter."""
    request = make_connector().first_request("products", Window(None, None))
    assert request.url == "/admin/api/2024-04/products.json"
    assert "status" not in dict(request.params)


def test_page_size_sets_limit() -> None:
    """A page_size in the table sets the limit, capped at 250."""
    request = make_connector(page_size=50).first_request("orders", Window(None, None))
    assert dict(request.params)["limit"] == "50"


def test_next_page_from_link() -> None:
    """The next page is the Link URL's page_info and limit, nothing else."""
    link = (
        f"{SHOP}/admin/api/2024-04/orders.json?limit=250&page_info=eyJsYXN0X2lkIjo0fQ"
    )
    response = page_response(b'{"orders": []}', {"link": f'<{link}>; rel="next"'})
    connector = make_connector()
    request = connector.first_request("orders", Window(None, None))
    page = connector.parse_page("orders", request, response)
    assert page.next == PageRequest(
        url=f"{SHOP}/admin/api/2024-04/orders.json",
        params=(("limit", "250"), ("page_info", "eyJsYXN0X2lkIjo0fQ")),
    )


ORDER_TIMES = (
    '"created_at": "2024-05-01T10:00:00-04:00", '
    '"updated_at": "2024-05-01T11:00:00-04:00"'
)


def listed_payloads(fields: str) -> tuple[str, list[str]]:
    """Return an order's text and the payloads read from a page of it alone."""
    item = f'{{"id": 450789469, {fields}, {ORDER_TIMES}}}'
    page = parse_listed(make_connector(), "orders", f'{{"orders": [{item}]}}'.encode())
    return item, [record.payload for record in page.records]


def test_listed_payload_exact_text() -> None:
    """A listed order's payload is its text in the page, spelling kept."""
    item, payloads = listed_payloads('"total_price": 10.10,\n "note": "caf\\u00e9"')
    assert payloads == [item]


def test_listed_repeated_key_serialised() -> None:
    """An order repeating a key is stored serialised, with the last value."""
    item, (payload,) = listed_payloads('"note": "first", "note": "last"')
    assert payload != item
    assert json.loads(payload)["note"] == "last"
    assert payload.count('"note"') == 1


def test_parse_page_rejects_missing_array() -> None:
    """A response without the listing's array is a ResponseError."""
    connector = make_connector()
    with pytest.raises(ResponseError, match="'orders' array"):
        parse_listed(connector, "orders", b'{"products": []}')


def test_auth_header() -> None:
    """API requests carry the access token in X-Shopify-Access-Token."""
    assert make_connector().auth_headers() == {"X-Shopify-Access-Token": TOKEN}


def test_listings_follow_resources() -> None:
    """The listings are the configured resources."""
    assert make_connector(resources=["products"]).listings() == ["products"]


# Configuration


def test_missing_base_url_reported_by_config() -> None:
    """Loading a table without api_base_url names the key and the fix."""
    with pytest.raises(ConfigError, match=r"providers\.shop\.api_base_url: required"):
        make_connector(api_base_url=None)


def test_missing_api_version_reported() -> None:
    """A table without api_version is a configuration error naming the key."""
    with pytest.raises(ConfigError, match="api_version: required key is missing"):
        make_connector(api_version=None)


def test_invalid_api_version_reported() -> None:
    """An api_version that is no Shopify release is rejected with an example."""
    with pytest.raises(ConfigError, match="'2024-05'"):
        make_connector(api_version="2024-05")


def test_unknown_resource_reported() -> None:
    """A resource other than orders and products is a configuration error."""
    with pytest.raises(ConfigError, match="resources"):
        make_connector(resources=["customers"])


# Call limits


@pytest.mark.parametrize(
    ("header", "expected"),
    [("39/40", 2.0), ("40/40", 2.5), ("36/40", 0.5), ("79/80", 4.0)],
)
def test_call_limit_wait(header: str, expected: float) -> None:
    """A nearly full bucket waits until a tenth of it has leaked at 2 calls/s."""
    response = page_response(b"{}", {"x-shopify-shop-api-call-limit": header})
    assert make_connector().rate_limit_wait(response) == expected


@pytest.mark.parametrize("header", ["35/40", "1/40", "abc", "3/0"])
def test_call_limit_no_wait(header: str) -> None:
    """A bucket with room, or an unreadable header, asks for no wait."""
    response = page_response(b"{}", {"x-shopify-shop-api-call-limit": header})
    assert make_connector().rate_limit_wait(response) is None


def test_poll_pages_through_page_info(store: Store) -> None:
    """A poll follows page_info links, sends no filters with them, and paces."""
    orders = sample("orders")["orders"]
    second = dict(
        orders[0], id=820982911946154508, updated_at="2008-01-10T12:00:00-05:00"
    )
    link = f"{SHOP}/admin/api/2024-04/orders.json?limit=250&page_info=abc"
    pages = iter(
        [
            page_response(
                json.dumps({"orders": orders}).encode(),
                {
                    "link": f'<{link}>; rel="next"',
                    "x-shopify-shop-api-call-limit": "39/40",
                },
            ),
            page_response(json.dumps({"orders": [second]}).encode()),
        ]
    )
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return next(pages)

    sleeps: list[float] = []
    connector = make_connector(resources=["orders"], start_from="2008-01-01T00:00:00Z")
    with respx.mock(assert_all_mocked=True) as router, httpx.Client() as client:
        router.get(f"{SHOP}/admin/api/2024-04/orders.json").mock(side_effect=respond)
        runner = ProviderRunner(
            store, connector, client, clock=lambda: T0, sleep=sleeps.append
        )
        report = runner.poll()[0]

    assert report.ok
    assert dict(sent[1].url.params) == {"limit": "250", "page_info": "abc"}
    assert sent[0].headers["x-shopify-access-token"] == TOKEN
    assert sleeps == [2.0]
    assert {entry.key for entry in logged(store)} == {
        "order:450789469:2008-01-10T16:00:00Z",
        "order:820982911946154508:2008-01-10T17:00:00Z",
    }
