"""Conditional requests, server poll intervals and rate limits, through respx."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
import respx

from syncd import config as config_module
from syncd import polling
from syncd.pacing import RateBudgets
from syncd.rate_limit_state import load_rate_limit
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime
from syncd.store import load_cursor

BASE = "http://127.0.0.1:9"
T0 = 1714557600


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def event(number: int, created: int) -> dict:
    return {
        "id": f"evt_{number}",
        "object": "event",
        "type": "invoice.paid",
        "created": created,
        "data": {"object": {"id": f"in_{number}", "object": "invoice"}},
    }


def page(*events: dict, headers: dict | None = None, status: int = 200):
    body = {
        "object": "list",
        "data": list(events),
        "has_more": False,
        "url": "/v1/events",
    }
    return httpx.Response(status, json=body, headers=headers or {})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runner_factory(database_url, clock):
    """Return a function building a polling runner on the test database."""
    opened = []

    def build(budgets=None, token="sk_test_pacing", name="payments", **provider):
        config = config_module.parse(
            {
                "daemon": {"database": database_url},
                "providers": {
                    name: {
                        "connector": "stripe",
                        "api_base_url": BASE,
                        "api_token": token,
                        "start_from": "2024-05-01T09:00:00Z",
                        "max_retry_wait": "2m",
                        **provider,
                    }
                },
            }
        )
        runtime = Runtime.open(config, clock=clock)
        client = httpx.Client()
        sleeps: list[float] = []
        runner = ProviderRunner(
            runtime.store,
            runtime.connectors[name],
            client,
            clock=clock,
            sleep=sleeps.append,
            budgets=budgets,
        )
        runner.sleeps = sleeps
        opened.append((runtime, client))
        return runner

    yield build
    for runtime, client in opened:
        client.close()
        runtime.close()


def cursor_state(runner) -> dict:
    with runner.store.session() as session:
        return load_cursor(session, runner.name, "events")


@respx.mock
def test_etag_sent_and_304_is_healthy(runner_factory, clock):
    """A stored ETag is sent back, and a 304 counts as a healthy poll."""
    route = respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            page(event(1, T0 - 5)),
            page(event(1, T0 - 5), headers={"ETag": '"v1"'}),
            httpx.Response(304),
        ]
    )
    runner = runner_factory()
    runner.poll()
    runner.poll()
    clock.now += 61

    report = runner.poll()[0]

    assert report.ok
    assert report.not_modified
    assert route.calls[2].request.headers["If-None-Match"] == '"v1"'


@respx.mock
def test_stale_etag_gets_unconditional_request(runner_factory, clock):
    """After repeated 304s, one request goes out without validators (FC-15)."""
    answers = [page(event(1, T0 - 5))]
    answers += [page(event(1, T0 - 5), headers={"ETag": '"v1"'})]
    answers += [httpx.Response(304)] * 10
    answers += [page(event(1, T0 - 5), event(2, T0 + 100))]
    route = respx.get(f"{BASE}/v1/events").mock(side_effect=answers)
    runner = runner_factory()
    for _ in range(13):
        runner.poll()
        clock.now += 30

    last = route.calls[-1].request
    assert "If-None-Match" not in last.headers
    assert cursor_state(runner)["high_water"] == "2024-05-01T10:01:40.000000Z"


@respx.mock
def test_x_poll_interval_delays_next_poll(runner_factory, clock):
    """X-Poll-Interval: 60 keeps the next poll at least 60 s away (FC-16)."""
    route = respx.get(f"{BASE}/v1/events").mock(
        return_value=page(headers={"X-Poll-Interval": "60"})
    )
    runner = runner_factory(poll_interval="10s")
    runner.poll()
    clock.now += 30

    skipped = runner.poll()[0]
    clock.now += 31
    runner.poll()

    assert skipped.skipped
    assert route.call_count == 2


@respx.mock
def test_cache_control_max_age_on_304(runner_factory, clock):
    """A 304 with Cache-Control max-age=300 is healthy and spaces the polls."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            page(headers={"ETag": '"a"'}),
            httpx.Response(304, headers={"Cache-Control": "private, max-age=300"}),
            page(),
        ]
    )
    runner = runner_factory(start_from="now")
    runner.poll()
    clock.now += 60
    healthy = runner.poll()[0]
    clock.now += 299

    early = runner.poll()[0]

    assert healthy.ok
    assert early.skipped


@respx.mock
def test_unreadable_poll_interval_backs_off(runner_factory, clock, caplog):
    """X-Poll-Interval: abc is logged and backs off instead of reading as 0."""
    respx.get(f"{BASE}/v1/events").mock(
        return_value=page(headers={"X-Poll-Interval": "abc"})
    )
    runner = runner_factory(poll_interval="1m")
    with caplog.at_level(logging.WARNING):
        runner.poll()
    clock.now += 61

    report = runner.poll()[0]

    assert report.skipped
    assert "unreadable X-Poll-Interval 'abc'" in caplog.text


@respx.mock
def test_remaining_zero_waits_for_reset(runner_factory, clock):
    """X-RateLimit-Remaining: 0 holds the next request until the reset time."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [event(1, T0 - 5)],
                    "has_more": True,
                    "url": "/v1/events",
                },
                headers={
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(T0 + 45),
                },
            ),
            page(),
        ]
    )
    runner = runner_factory()

    report = runner.poll()[0]

    assert report.ok
    assert runner.sleeps == [45.0]


@respx.mock
def test_secondary_rate_limit_403_retried(runner_factory, clock):
    """A 403 naming a secondary rate limit is retried even with quota left."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(
                403,
                json={"message": "You have exceeded a secondary rate limit."},
                headers={"X-RateLimit-Remaining": "4000"},
            ),
            page(event(1, T0 - 5)),
        ]
    )
    runner = runner_factory()

    report = runner.poll()[0]

    assert report.ok
    assert runner.sleeps[0] >= 60


@respx.mock
def test_429_without_header_waits_default(runner_factory, clock):
    """A 429 without Retry-After waits a safe default before retrying."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(429),
            page(event(1, T0 - 5)),
        ]
    )
    runner = runner_factory()

    runner.poll()

    assert runner.sleeps[0] >= 60


@respx.mock
def test_429_without_header_doubles_wait(runner_factory, clock):
    """Rate limits that name no wait are waited out for 60 s, then 120 s, 240 s."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(429),
            httpx.Response(429, headers={"Retry-After": "soon"}),
            httpx.Response(429),
            page(event(1, T0 - 5)),
        ]
    )
    runner = runner_factory(max_retry_wait="10m", max_attempts=5)

    report = runner.poll()[0]

    assert report.ok
    assert runner.sleeps == [60, 120, 240]


@respx.mock
def test_unreadable_retry_after_logged_once(runner_factory, clock, caplog):
    """An unreadable Retry-After is logged once per response, naming the URL."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "soon"}),
            page(event(1, T0 - 5)),
        ]
    )
    runner = runner_factory()

    runner.poll()

    lines = [r.getMessage() for r in caplog.records if "Retry-After" in r.getMessage()]
    assert len(lines) == 1
    assert f"GET {BASE}/v1/events" in lines[0]
    assert "'soon'" in lines[0]


@pytest.mark.parametrize("value", ["99999999999999999999999", "inf", "1e999"])
@respx.mock
def test_huge_retry_after_ends_run(runner_factory, clock, value):
    """A Retry-After beyond any plausible wait ends the run with its message."""
    respx.get(f"{BASE}/v1/events").mock(
        return_value=httpx.Response(429, headers={"Retry-After": value})
    )
    runner = runner_factory()

    report = runner.poll()[0]

    assert not report.ok
    assert "longer than max_retry_wait" in (report.error or "")
    with runner.store.session() as session:
        state = load_rate_limit(session, "payments")
    assert state is not None
    assert state["blocked_until"].startswith("2024-05-31")


@pytest.mark.parametrize("value", ["-5", "nan"])
@respx.mock
def test_invalid_retry_after_logged(runner_factory, clock, caplog, value):
    """A negative or NaN Retry-After is logged as unreadable and not obeyed."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": value}),
            page(event(1, T0 - 5)),
        ]
    )
    runner = runner_factory()

    report = runner.poll()[0]

    assert report.ok
    assert runner.sleeps == [60]
    assert f"unreadable Retry-After header {value!r}" in caplog.text


@respx.mock
def test_plain_403_is_authentication_error(runner_factory, clock):
    """A 403 without rate-limit signs fails the run at once, naming the token."""
    respx.get(f"{BASE}/v1/events").mock(
        return_value=httpx.Response(403, json={"message": "Forbidden"})
    )
    runner = runner_factory()

    report = runner.poll()[0]

    assert not report.ok
    assert "api_token" in report.error
    assert runner.sleeps == []


@respx.mock
def test_long_hold_ends_run_without_advancing(runner_factory, clock):
    """A rate limit longer than max_retry_wait ends the run; the cursor stays."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            page(
                event(1, T0 - 5),
                headers={
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(T0 + 3600),
                },
            ),
            page(event(2, T0 + 10)),
        ]
    )
    runner = runner_factory()
    runner.poll()
    before = cursor_state(runner)
    clock.now += 60

    report = runner.poll()[0]

    assert not report.ok
    assert "rate limited" in report.error
    assert cursor_state(runner)["high_water"] == before["high_water"]


@respx.mock
def test_budget_shared_by_one_credential(runner_factory, clock):
    """Two providers with one token share a budget; another token does not."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            page(
                headers={
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(T0 + 30),
                }
            ),
            page(),
            page(),
        ]
    )
    budgets = RateBudgets(clock)
    first = runner_factory(budgets=budgets, name="first")
    same = runner_factory(budgets=budgets, name="second")
    other = runner_factory(budgets=budgets, name="third", token="sk_other")
    first.poll()

    same.poll()
    other.poll()

    assert same.sleeps == [30.0]
    assert other.sleeps == []


def test_cursor_state_is_json(runner_factory):
    """The stored cursor state is plain JSON."""
    runner = runner_factory()
    with respx.mock:
        respx.get(f"{BASE}/v1/events").mock(return_value=page(event(1, T0 - 5)))
        runner.poll()
    assert json.loads(json.dumps(cursor_state(runner)))["high_water"]


@respx.mock
def test_long_retry_after_ends_run(runner_factory, clock):
    """A Retry-After longer than max_retry_wait ends the run without retrying."""
    route = respx.get(f"{BASE}/v1/events").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "600"})
    )
    runner = runner_factory(max_retry_wait="1m")

    report = runner.poll()[0]

    assert not report.ok
    assert "Retry-After 600s" in report.error
    assert route.call_count == 1
    assert runner.sleeps == []


@pytest.mark.parametrize(
    ("headers", "until", "reason"),
    [
        (
            {"Retry-After": "30"},
            "2024-05-01T10:00:30.000000Z",
            "the provider's Retry-After",
        ),
        ({}, "2024-05-01T10:01:00.000000Z", "a rate limit that named no wait"),
    ],
)
@respx.mock
def test_rate_limit_wait_saved_while_sleeping(
    runner_factory, clock, headers, until, reason
):
    """A run sleeping on a 429 has saved the wait, so status shows it."""
    respx.get(f"{BASE}/v1/events").mock(
        side_effect=[httpx.Response(429, headers=headers), page(event(1, T0 - 5))]
    )
    runner = runner_factory()
    during = []

    def sleep(seconds: float) -> None:
        with runner.store.session() as session:
            during.append(load_rate_limit(session, "payments"))
        clock.now += seconds

    runner.sleep = sleep
    report = runner.poll()[0]
    with runner.store.session() as session:
        after = load_rate_limit(session, "payments") or {}

    assert report.ok
    assert len(during) == 1
    assert during[0]["blocked_until"] == until
    assert during[0]["reason"] == reason
    assert "blocked_until" not in after


@respx.mock
def test_future_event_does_not_stall_polls(runner_factory, clock, caplog, monkeypatch):
    """An event dated a year ahead does not move the next poll past new events.

    Its WARNING is logged once, though each poll lists it again.
    """
    monkeypatch.setattr(polling, "_future_logged", {})
    far = T0 + 365 * 86400
    route = respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            page(event(1, far), event(2, T0 - 5)),
            page(event(1, far), event(3, T0 + 30)),
        ]
    )
    runner = runner_factory()

    runner.poll()
    clock.now += 60
    (second,) = runner.poll()

    since = int(route.calls[1].request.url.params["created[gte]"])
    warnings = [r for r in caplog.records if "ahead of this host's" in r.getMessage()]
    assert since <= T0
    assert second.new == 1
    assert len(warnings) == 1
    assert "365d 0h" in warnings[0].getMessage()


@respx.mock
def test_slow_timeouts_get_every_attempt(runner_factory, clock, monkeypatch):
    """Requests that time out slowly are still tried max_attempts times."""
    elapsed = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: elapsed[0])

    def slow_timeout(request: httpx.Request) -> httpx.Response:
        elapsed[0] += 1.5  # the request takes most of its timeout
        raise httpx.ReadTimeout("timed out", request=request)

    route = respx.get(f"{BASE}/v1/events").mock(side_effect=slow_timeout)
    runner = runner_factory(max_attempts=3, max_retry_wait="1s", request_timeout="2s")

    (report,) = runner.poll()

    assert not report.ok
    assert "timed out" in (report.error or "")
    assert route.call_count == 3


@respx.mock
def test_long_rate_limit_logged_once(runner_factory, clock, caplog):
    """Runs that meet the same long rate-limit wait log one ERROR line, not one each."""
    respx.get(f"{BASE}/v1/events").mock(
        return_value=httpx.Response(429, headers={"Retry-After": "100000"})
    )
    runner = runner_factory(budgets=RateBudgets(clock))
    runner.poll()
    caplog.clear()

    for _ in range(3):
        clock.now += 3
        runner.poll()

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "rate limited until 2024-05-02T13:46:40Z" in errors[0]


@respx.mock
def test_rejected_saved_cursor_restarts_window(runner_factory, clock):
    """A saved page cursor the provider rejects is dropped, and polls go on."""
    more = page(event(1, T0 - 5))
    more_body = json.loads(more.content)
    more_body["has_more"] = True
    route = respx.get(f"{BASE}/v1/events").mock(
        side_effect=[
            httpx.Response(200, json=more_body),
            httpx.Response(500),
            httpx.Response(400, json={"error": {"message": "No such event"}}),
            page(event(2, T0 + 1), event(1, T0 - 5)),
        ]
    )
    runner = runner_factory(max_attempts=1)

    (stopped,) = runner.poll()
    clock.now += 5
    (rejected,) = runner.poll()
    clock.now += 5
    (restarted,) = runner.poll()

    resumed = route.calls[2].request.url.params
    fresh = route.calls[3].request.url.params
    assert not stopped.ok
    assert resumed["starting_after"] == "evt_1"
    assert "rejected the saved page cursor" in (rejected.error or "")
    assert "starting_after" not in fresh
    assert restarted.ok
    assert restarted.new == 1
    assert cursor_state(runner)["next"] is None
