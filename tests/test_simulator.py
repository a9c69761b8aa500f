"""Tests of the simulated Stripe provider against its real server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from syncd.simulator import (
    LARGE_AMOUNT,
    WEBHOOK_USER_AGENT,
    DeliveryStats,
    SimulatedStripe,
)

API_KEY = "sk_test_simulated_4242"
WEBHOOK_SECRET = "whsec_simulated_secret"
START = 1_700_000_000.0


class FakeClock:
    """Clock injected into the simulator, moved by hand instead of sleeping."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stripe(clock: FakeClock) -> SimulatedStripe:
    return SimulatedStripe(
        api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=7, clock=clock
    )


@pytest.fixture
def base_url(stripe: SimulatedStripe) -> Iterator[str]:
    url = stripe.serve()
    yield url
    stripe.stop()


@pytest.fixture
def api(base_url: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(
        base_url=base_url, headers=headers, trust_env=False, timeout=5.0
    ) as client:
        yield client


def list_events(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.get("/v1/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def page_through(api: httpx.Client, **params: Any) -> tuple[list[str], int]:
    """Follow starting_after to the end and return all ids and the page count."""
    ids: list[str] = []
    pages = 0
    while True:
        body = list_events(api, **params)
        pages += 1
        ids.extend(event["id"] for event in body["data"])
        if not body["has_more"]:
            return ids, pages
        params["starting_after"] = ids[-1]


def expected_newest_first(stripe: SimulatedStripe, events: list[dict]) -> list[str]:
    """Sort emitted events the way Stripe lists them: created, then emit order."""
    order = {event_id: index for index, event_id in enumerate(stripe.truth())}
    ordered = sorted(events, key=lambda e: (e["created"], order[e["id"]]), reverse=True)
    return [event["id"] for event in ordered]


def hmac_header(body: bytes, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@contextmanager
def run_app(app: Starlette) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port for the duration of the block."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        deadline = time.monotonic() + 5.0
        while not server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}/webhook"
    finally:
        server.should_exit = True
        thread.join(5.0)
        listener.close()


class Receiver:
    """Webhook endpoint that records each request and responds with a fixed status."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/webhook", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.requests.append((dict(request.headers), body))
        return Response(status_code=self.status)

    def event_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, body in self.requests]


def test_list_rejects_missing_api_key(stripe, base_url):
    """A request without an Authorization header gets 401 in Stripe's error shape."""
    response = httpx.get(f"{base_url}/v1/events", trust_env=False)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "message" in response.json()["error"]


def test_list_rejects_wrong_api_key(stripe, base_url):
    """A wrong bearer key gets 401 and the message does not echo the whole key."""
    headers = {"Authorization": "Bearer sk_test_wrong_key_9999"}
    response = httpx.get(f"{base_url}/v1/events", headers=headers, trust_env=False)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "sk_test_wrong_key" not in response.json()["error"]["message"]


def test_list_newest_first(stripe, clock, api):
    """Events are listed by created descending, then by emit order descending."""
    first = stripe.emit("customer.created", created=int(START) - 10)
    same_a = stripe.emit("invoice.created", created=int(START) - 5)
    same_b = stripe.emit("invoice.paid", created=int(START) - 5)
    older = stripe.emit("charge.succeeded", created=int(START) - 20)
    body = list_events(api)
    ids = [event["id"] for event in body["data"]]
    assert ids == [same_b["id"], same_a["id"], first["id"], older["id"]]
    assert body["object"] == "list"
    assert body["url"] == "/v1/events"
    assert body["has_more"] is False


def test_list_page_shape_and_event_fields(stripe, api):
    """Listed events carry the fields of a real Stripe event object."""
    stripe.emit("customer.created")
    event = list_events(api)["data"][0]
    assert re.fullmatch(r"evt_[A-Za-z0-9]{24}", event["id"])
    assert event["object"] == "event"
    assert event["livemode"] is False
    assert event["type"] == "customer.created"
    assert isinstance(event["pending_webhooks"], int)
    assert set(event["request"]) == {"id", "idempotency_key"}
    assert event["data"]["object"]["object"] == "customer"
    assert event["data"]["object"]["id"].startswith("cus_")
    assert event["data"]["object"]["name"] == "Zoë Faure"


def test_paging_same_second_group_split(stripe, api):
    """Paging with starting_after over a same-second run split by a page boundary."""
    base = int(START) - 100
    for offset in range(3):
        stripe.emit("charge.succeeded", created=base + offset)
    for _ in range(6):  # one second, split across the pages of 4
        stripe.emit("customer.updated", created=base + 10)
    for offset in range(3):
        stripe.emit("invoice.created", created=base + 20 + offset)
    ids, pages = page_through(api, limit=4)
    assert ids == list(reversed(stripe.truth()))
    assert len(set(ids)) == len(ids)
    assert pages == 3
    assert stripe.requests == 3


def test_paging_emit_many_every_event_once(stripe, api):
    """Paging over emit_many output with same-second runs returns each event once."""
    events = stripe.emit_many(60, same_second_groups=6)
    ids, pages = page_through(api, limit=7)
    assert Counter(ids) == Counter(stripe.truth())
    assert ids == expected_newest_first(stripe, events)
    assert pages == 9


def test_emit_many_same_second_groups(stripe):
    """emit_many makes the requested number of runs of 3 to 6 same-second events."""
    events = stripe.emit_many(40, same_second_groups=4)
    per_second = Counter(event["created"] for event in events)
    runs = [size for size in per_second.values() if size > 1]
    assert len(events) == 40
    assert len(runs) == 4
    assert all(3 <= size <= 6 for size in runs)
    assert max(per_second) == int(START)


def test_emit_many_rejects_too_many_groups(stripe):
    """Groups that need more events than count raise ValueError."""
    with pytest.raises(ValueError, match="same_second_groups"):
        stripe.emit_many(5, same_second_groups=2)


def test_ending_before_returns_closest_page(stripe, api):
    """ending_before returns the page just newer than the cursor, newest first."""
    events = [
        stripe.emit("charge.succeeded", created=int(START) - 10 + i) for i in range(6)
    ]
    body = list_events(api, ending_before=events[1]["id"], limit=2)
    ids = [event["id"] for event in body["data"]]
    assert ids == [events[3]["id"], events[2]["id"]]
    assert body["has_more"] is True


def test_created_bounds_inclusive(stripe, api):
    """created[gte] and created[lte] include their bounds, gt and lt exclude them."""
    for offset in range(5):
        stripe.emit("customer.created", created=int(START) - 10 + offset)
    low, high = int(START) - 9, int(START) - 7
    inclusive = list_events(api, **{"created[gte]": low, "created[lte]": high})
    exclusive = list_events(api, **{"created[gt]": low, "created[lt]": high})
    exact = list_events(api, created=low)
    assert [e["created"] for e in inclusive["data"]] == [high, high - 1, low]
    assert [e["created"] for e in exclusive["data"]] == [low + 1]
    assert [e["created"] for e in exact["data"]] == [low]


def test_type_and_types_filters(stripe, api):
    """type accepts a wildcard and types[] matches any of several exact types."""
    stripe.emit("customer.created")
    stripe.emit("invoice.paid")
    stripe.emit("customer.subscription.updated")
    wildcard = list_events(api, type="customer.*")
    several = api.get(
        "/v1/events", params=[("types[]", "invoice.paid"), ("types[]", "x.y")]
    ).json()
    assert {e["type"] for e in wildcard["data"]} == {
        "customer.created",
        "customer.subscription.updated",
    }
    assert [e["type"] for e in several["data"]] == ["invoice.paid"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"starting_after": "evt_missing"}, "starting_after"),
        ({"created[gte]": "yesterday"}, "created[gte]"),
        ({"colour": "blue"}, "colour"),
        ({"delivery_success": "false"}, "delivery_success"),
        ([("starting_after", "evt_a"), ("ending_before", "evt_b")], "ending_before"),
        ([("type", "charge.*"), ("types[]", "charge.succeeded")], "types"),
        ([("types[]", f"type.{n}") for n in range(21)], "types"),
    ],
)
def test_list_rejects_invalid_params(stripe, api, params, param):
    """Invalid list parameters get 400 with the parameter named in the error."""
    response = api.get("/v1/events", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param


def test_unknown_cursor_is_resource_missing(stripe, api):
    """An unknown starting_after id gets the resource_missing error code."""
    response = api.get("/v1/events", params={"starting_after": "evt_missing"})
    assert response.json()["error"]["code"] == "resource_missing"


def test_list_hides_events_past_retention(stripe, clock, api):
    """Events created more than 30 days before the clock are no longer listed."""
    old = stripe.emit("customer.created", created=int(START) - 30 * 86400)
    at_limit = list_events(api)
    clock.advance(1)
    past_limit = list_events(api)
    assert [e["id"] for e in at_limit["data"]] == [old["id"]]
    assert past_limit["data"] == []
    assert stripe.truth() == [old["id"]]


def test_visible_delay_hides_until_clock(stripe, clock, api):
    """An event with visible_delay is listed only once the injected clock passes it."""
    hidden = stripe.emit("invoice.paid", visible_delay=30)
    assert hidden["id"] not in [e["id"] for e in list_events(api)["data"]]
    clock.advance(29.5)
    assert hidden["id"] not in [e["id"] for e in list_events(api)["data"]]
    clock.advance(0.5)
    assert hidden["id"] in [e["id"] for e in list_events(api)["data"]]
    assert stripe.truth() == [hidden["id"]]


def test_cursor_stable_for_late_event(stripe, clock, api):
    """An event that becomes visible late shows up behind a fixed cursor page."""
    oldest = stripe.emit("customer.created", created=int(START) - 3)
    late = stripe.emit("customer.updated", created=int(START) - 2, visible_delay=10)
    newest = stripe.emit("charge.succeeded", created=int(START) - 1)
    first = list_events(api, limit=1)
    before = list_events(api, limit=1, starting_after=newest["id"])
    clock.advance(10)
    after = list_events(api, limit=1, starting_after=newest["id"])
    from_hidden = list_events(api, starting_after=late["id"])
    assert [e["id"] for e in first["data"]] == [newest["id"]]
    assert [e["id"] for e in before["data"]] == [oldest["id"]]
    assert [e["id"] for e in after["data"]] == [late["id"]]
    assert after["has_more"] is True
    assert [e["id"] for e in from_hidden["data"]] == [oldest["id"]]


def test_fail_next_then_recovers(stripe, api):
    """fail_next responds with 500, then 429 with Retry-After, then data again."""
    stripe.emit("customer.created")
    stripe.fail_next(1, status=500)
    stripe.fail_next(1, status=429, retry_after=3)
    server_error = api.get("/v1/events")
    rate_limited = api.get("/v1/events")
    recovered = api.get("/v1/events")
    assert server_error.status_code == 500
    assert server_error.json()["error"]["type"] == "api_error"
    assert rate_limited.status_code == 429
    assert rate_limited.headers["Retry-After"] == "3"
    assert rate_limited.json()["error"]["code"] == "rate_limit"
    assert recovered.status_code == 200
    assert len(recovered.json()["data"]) == 1
    assert stripe.requests == 3


def test_sign_matches_independent_hmac(stripe, clock):
    """sign() equals an HMAC-SHA256 computed here, with explicit and clock times."""
    body = stripe.webhook_body(stripe.emit("customer.created"))
    assert stripe.sign(body, 1533204620) == hmac_header(body, 1533204620)
    assert stripe.sign(body) == hmac_header(body, int(clock()))


def test_webhook_body_is_indented_utf8(stripe):
    """The webhook body is indented JSON with raw UTF-8 and exact large integers."""
    customer = stripe.emit("customer.created")
    invoices = [stripe.emit("invoice.created") for _ in range(4)]
    body = stripe.webhook_body(customer)
    large = stripe.webhook_body(invoices[3])
    assert "Zoë".encode() in body
    assert body.startswith(b'{\n  "id": ')
    assert json.loads(body) == customer
    assert str(LARGE_AMOUNT).encode() in large
    assert json.loads(large)["data"]["object"]["amount_due"] == LARGE_AMOUNT


def test_deliver_counts_drops_and_repeats(stripe, clock):
    """deliver() with a fixed seed drops and repeats events and counts them right."""
    events = stripe.emit_many(40)
    receiver = Receiver()
    with run_app(receiver.app) as url:
        stats = stripe.deliver(url, events, drop_rate=0.25, repeat_rate=0.3)
    received = Counter(receiver.event_ids())
    assert stats.dropped > 0
    assert stats.repeated > 0
    assert stats.dropped == len(stats.dropped_ids)
    assert stats.dropped + len(stats.delivered_ids) == len(events)
    assert set(received) == set(stats.delivered_ids)
    assert not set(received) & set(stats.dropped_ids)
    assert sum(received.values()) == stats.sent
    assert sum(1 for n in received.values() if n > 1) == stats.repeated
    assert stats.delivered == stats.sent
    assert stats.failed == 0


def test_deliver_same_seed_same_plan(clock):
    """Two simulators with one seed drop and repeat the same events."""
    results: list[DeliveryStats] = []
    for _ in range(2):
        sim = SimulatedStripe(
            api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=3, clock=clock
        )
        events = sim.emit_many(20)
        with run_app(Receiver().app) as url:
            results.append(sim.deliver(url, events, drop_rate=0.3, repeat_rate=0.3))
    assert results[0] == results[1]


def test_deliver_sends_stripe_headers(stripe, clock):
    """Each POST carries a valid Stripe-Signature, the JSON type and Stripe's agent."""
    events = stripe.emit_many(5)
    receiver = Receiver()
    with run_app(receiver.app) as url:
        stripe.deliver(url, events, reorder=True, concurrency=2)
    assert len(receiver.requests) == 5
    for headers, body in receiver.requests:
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == WEBHOOK_USER_AGENT
        assert headers["stripe-signature"] == hmac_header(body, int(clock()))


def test_deliver_counts_failures(stripe):
    """Non-2xx responses count as failed and their events are not delivered."""
    events = stripe.emit_many(4)
    with run_app(Receiver(status=500).app) as url:
        stats = stripe.deliver(url, events)
    assert stats.sent == 4
    assert stats.failed == 4
    assert stats.delivered == 0
    assert stats.delivered_ids == []
