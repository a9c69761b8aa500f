"""One contract, run over every built-in connector.

Each case gives a connector, a real webhook body it receives, that body
signed the provider's way, and a listing response that contains the same
object at the same version. The tests check what the core relies on: a
valid signature verifies and a changed byte does not, a missing signature is
a SignatureError, a webhook and the polled copy share one dedup key, records
are storable (aware UTC times, fields within the log's limits), and a body
that is not a listing raises ResponseError rather than anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.base import Connector, EventRecord, Window, record_problem
from connectors.registry import available, load_connector
from syncd import config
from syncd.errors import PayloadError, ResponseError, SignatureError

FIXTURES = Path(__file__).parents[1] / "fixtures"
T0 = 1714557600
API = "http://127.0.0.1:9"
STANDARD_SECRET = "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA="


@dataclass
class Case:
    """A connector with one webhook and the listing page of the same object."""

    name: str
    table: dict[str, Any]
    body: bytes
    headers: dict[str, str]
    listing: str
    page: bytes
    bad_page: bytes = b""

    def connector(self) -> Connector:
        parsed = config.parse({"providers": {"contract": self.table}})
        return load_connector(self.table["connector"])(parsed.providers["contract"])


def _hmac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def stripe_case() -> Case:
    page = (FIXTURES / "stripe/derived/events_list.page2.derived.json").read_bytes()
    event = json.loads(page)["data"][0]
    body = json.dumps(event, indent=2, ensure_ascii=False).encode()
    secret = "whsec_contract"
    signature = _hmac(secret.encode(), f"{T0}.".encode() + body).hex()
    return Case(
        "stripe",
        {
            "connector": "stripe",
            "api_base_url": API,
            "api_token": "sk_test",
            "webhook_secret": secret,
            "signature_tolerance": "100000000d",
        },
        body,
        {"stripe-signature": f"t={T0},v1={signature}"},
        "events",
        page,
        json.dumps(dict(json.loads(page), data=[{"object": "event"}, event])).encode(),
    )


def github_case() -> Case:
    body = (FIXTURES / "github/webhooks/issues/edited.payload.json").read_bytes()
    issue = json.loads(body)["issue"]
    secret = "github-contract"
    return Case(
        "github",
        {
            "connector": "github",
            "api_token": "ghp_test",
            "webhook_secret": secret,
            "repositories": ["Codertocat/Hello-World"],
            "api_base_url": API,
        },
        body,
        {
            "x-github-event": "issues",
            "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "x-hub-signature-256": "sha256=" + _hmac(secret.encode(), body).hex(),
        },
        "issues:codertocat/hello-world",
        json.dumps([issue]).encode(),
        json.dumps([{"number": "x"}, issue]).encode(),
    )


def shopify_case() -> Case:
    samples = FIXTURES / "shopify/shopify_python_api"
    order = json.loads((samples / "order.json").read_bytes())["order"]
    body = json.dumps(order).encode()
    secret = "shpss_contract"
    return Case(
        "shopify",
        {
            "connector": "shopify",
            "api_base_url": API,
            "api_token": "shpat_test",
            "webhook_secret": secret,
            "api_version": "2024-04",
        },
        body,
        {
            "x-shopify-hmac-sha256": base64.b64encode(
                _hmac(secret.encode(), body)
            ).decode(),
            "x-shopify-topic": "orders/updated",
            "x-shopify-event-id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
            "x-shopify-webhook-id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        },
        "orders",
        json.dumps({"orders": [order]}).encode(),
        json.dumps({"orders": [{"id": "x"}, order]}).encode(),
    )


def _standard_headers(body: bytes) -> dict[str, str]:
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    signed = f"msg_contract.{T0}.".encode() + body
    signature = base64.b64encode(_hmac(key, signed)).decode()
    return {
        "webhook-id": "msg_contract",
        "webhook-timestamp": str(T0),
        "webhook-signature": f"v1,{signature}",
    }


LISTING = {
    "path": "/v1/events",
    "items": "data",
    "id_field": "id",
    "time_field": "timestamp",
    "cursor": {"kind": "timestamp", "param": "after"},
    "pagination": {"kind": "none"},
}
ORDER = {"type": "order.created", "id": "ord_1", "timestamp": "2024-05-01T10:00:00Z"}


def standard_case() -> Case:
    body = json.dumps(ORDER).encode()
    return Case(
        "standard-webhooks",
        {
            "connector": "standard-webhooks",
            "webhook_secret": STANDARD_SECRET,
            "signature_tolerance": "100000000d",
            "key_field": "id",
            "time_field": "timestamp",
            "api_base_url": API,
            "api_token": "t",
            "listing": LISTING,
        },
        body,
        _standard_headers(body),
        "events",
        json.dumps({"data": [ORDER]}).encode(),
        json.dumps({"data": [{"type": "x"}, ORDER]}).encode(),
    )


def rest_case() -> Case:
    body = json.dumps(ORDER).encode()
    table = {
        "connector": "rest",
        "webhook_secret": STANDARD_SECRET,
        "signature_tolerance": "100000000d",
        "api_base_url": API,
        "api_token": "t",
        "webhook": {"kind": "standard-webhooks"},
        **LISTING,
    }
    return Case(
        "rest",
        table,
        body,
        _standard_headers(body),
        "events",
        json.dumps({"data": [ORDER]}).encode(),
        json.dumps({"data": [{"type": "x"}, ORDER]}).encode(),
    )


CASES = [stripe_case(), github_case(), shopify_case(), standard_case(), rest_case()]
IDS = [case.name for case in CASES]


def _response(case: Case, content: bytes) -> httpx.Response:
    return httpx.Response(
        200,
        content=content,
        headers={"content-type": "application/json"},
        request=httpx.Request("GET", API),
    )


def _listed(case: Case, connector: Connector, content: bytes) -> list[EventRecord]:
    request = connector.first_request(case.listing, Window(since=None, until=None))
    return connector.parse_page(case.listing, request, _response(case, content)).records


def test_every_built_in_connector_has_a_case():
    """The contract runs over every connector registered by syncd itself."""
    built_in = {
        name for name, path in available().items() if path.startswith("connectors.")
    }
    assert built_in == set(IDS)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_valid_signature_verifies(case):
    """The provider's signature over the raw body verifies."""
    assert case.connector().verify_webhook(case.headers, case.body, T0 + 1) is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_changed_byte_rejected(case):
    """One changed byte of the body fails verification with SignatureError."""
    changed = bytearray(case.body)
    changed[len(changed) // 2] ^= 0x01
    with pytest.raises(SignatureError):
        case.connector().verify_webhook(case.headers, bytes(changed), T0 + 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_missing_signature_rejected(case):
    """A request without the signature headers is a SignatureError."""
    with pytest.raises(SignatureError):
        case.connector().verify_webhook({}, case.body, T0 + 1)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_webhook_and_listing_share_key(case):
    """A webhook and the listed object at the same version have one key."""
    connector = case.connector()
    webhook_keys = {r.key for r in connector.parse_webhook(case.headers, case.body)}
    listed = _listed(case, connector, case.page)
    assert listed
    assert {r.key for r in listed} <= webhook_keys


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_records_are_storable(case):
    """Records have aware UTC times, string keys and fields within limits."""
    connector = case.connector()
    records = connector.parse_webhook(case.headers, case.body)
    records += _listed(case, connector, case.page)
    for record in records:
        assert record.occurred_at.utcoffset() == timedelta(0)
        assert isinstance(record.key, str)
        assert record_problem(record) is None
        json.loads(record.payload)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("content", [b"<html>502 Bad Gateway</html>", b"{", b"42"])
def test_unreadable_page_is_response_error(case, content):
    """A page that is not the expected listing raises ResponseError only."""
    with pytest.raises(ResponseError):
        _listed(case, case.connector(), content)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("body", [b"not json", b"[]", b'"text"'])
def test_unparseable_webhook_is_payload_error(case, body):
    """A verified body that holds no event raises PayloadError only."""
    with pytest.raises(PayloadError):
        case.connector().parse_webhook(case.headers, body)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_first_request_stays_on_api_base_url(case):
    """The first request of each listing is relative to, or on, api_base_url."""
    connector = case.connector()
    for listing in connector.listings():
        request = connector.first_request(listing, Window(since=None, until=None))
        assert request.url.startswith("/") or request.url.startswith(API)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_item_set_aside(case):
    """An unreadable item is set aside with a reason; the rest of the page stays."""
    connector = case.connector()
    request = connector.first_request(case.listing, Window(since=None, until=None))
    page = connector.parse_page(case.listing, request, _response(case, case.bad_page))
    good = _listed(case, connector, case.page)
    assert [r.key for r in page.records] == [r.key for r in good]
    assert len(page.rejected) == 1
    assert page.rejected[0][1]
