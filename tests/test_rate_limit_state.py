"""Rate-limit state saved by polls and reconciles, as ``syncd status`` reads it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.stripe import StripeConnector
from syncd import config
from syncd.models import Cursor, Event
from syncd.queries import provider_status
from syncd.rate_limit_state import (
    RATE_LIMIT_LISTING,
    load_rate_limit,
    read_rate_limit_headers,
    save_rate_limit,
)
from syncd.reconcile import ProviderRunner
from syncd.store import Store

T0 = 1714557600  # 2024-05-01T10:00:00Z
T0_ISO = "2024-05-01T10:00:00.000000Z"
API = "http://127.0.0.1:9"
EVENTS_URL = f"{API}/v1/events"


class Clock:
    """A settable Unix clock for the runner."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runner(store: Store) -> Iterator[ProviderRunner]:
    settings = config.parse(
        {
            "providers": {
                "payments": {
                    "connector": "stripe",
                    "api_base_url": API,
                    "api_token": "sk_test_rate_limit",
                    "max_attempts": 1,
                    "start_from": "2024-05-01T09:00:00Z",
                }
            },
        }
    )
    connector = StripeConnector(settings.providers["payments"])
    with httpx.Client() as client:
        yield ProviderRunner(
            store, connector, client, clock=Clock(T0), sleep=lambda _: None
        )


def event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "invoice.paid",
        "created": T0 - 60,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }


def page_response(*ids: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"object": "list", "data": [event(i) for i in ids], "has_more": False}
    return httpx.Response(200, json=body, headers=headers or {})


def poll_once(runner: ProviderRunner, response: httpx.Response):
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(return_value=response)
        (report,) = runner.poll()
    return report


def saved_state(store: Store) -> dict[str, Any] | None:
    with store.session() as session:
        return load_rate_limit(session, "payments")


GITHUB_HEADERS = {
    "X-RateLimit-Remaining": "4999",
    "X-RateLimit-Limit": "5000",
    "X-RateLimit-Reset": str(T0 + 600),
}


def test_poll_saves_rate_limit_headers(runner: ProviderRunner, store: Store) -> None:
    """A committed page saves the X-RateLimit figures of its response."""
    report = poll_once(runner, page_response("evt_1", headers=GITHUB_HEADERS))

    assert report.ok, report.error
    assert saved_state(store) == {
        "observed_at": T0_ISO,
        "remaining": 4999,
        "limit": 5000,
        "reset_at": "2024-05-01T10:10:00.000000Z",
    }


def test_poll_saves_budget_wait(runner: ProviderRunner, store: Store) -> None:
    """A page that empties the budget saves the wait it starts."""
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(T0 + 30)}

    poll_once(runner, page_response("evt_1", headers=headers))

    state = saved_state(store)
    assert state is not None
    assert state["remaining"] == 0
    assert state["blocked_until"] == "2024-05-01T10:00:30.000000Z"
    assert state["reason"] == "X-RateLimit-Remaining is 0"


def test_failed_run_saves_wait(runner: ProviderRunner, store: Store) -> None:
    """A run ended by a Retry-After beyond max_retry_wait saves that wait."""
    response = httpx.Response(429, headers={"Retry-After": "3600"})

    report = poll_once(runner, response)

    state = saved_state(store)
    assert not report.ok
    assert state == {
        "blocked_until": "2024-05-01T11:00:00.000000Z",
        "reason": "Retry-After 3600s",
    }


def test_successful_run_clears_wait(runner: ProviderRunner, store: Store) -> None:
    """A later run without rate-limit headers drops the wait a 429 asked for."""
    poll_once(runner, httpx.Response(429, headers={"Retry-After": "3600"}))
    # A runner with its own budget, as in a later `syncd reconcile` process.
    later = ProviderRunner(store, runner.connector, runner.client, clock=Clock(T0 + 60))

    report = poll_once(later, page_response("evt_1"))

    assert report.ok, report.error
    assert saved_state(store) == {}


def test_no_headers_saves_nothing(runner: ProviderRunner, store: Store) -> None:
    """A provider that sends no rate-limit headers gets no rate-limit row."""
    poll_once(runner, page_response("evt_1"))

    assert saved_state(store) is None


def test_later_page_replaces_state(runner: ProviderRunner, store: Store) -> None:
    """Each saved state replaces the previous one in the same row."""
    poll_once(runner, page_response("evt_1", headers=GITHUB_HEADERS))
    runner.clock.now += 120  # type: ignore[attr-defined]
    later = dict(GITHUB_HEADERS, **{"X-RateLimit-Remaining": "4321"})

    poll_once(runner, page_response("evt_2", headers=later))

    state = saved_state(store)
    assert state is not None
    assert state["remaining"] == 4321
    assert state["observed_at"] == "2024-05-01T10:02:00.000000Z"
    with store.session() as session:
        rows = session.scalars(
            select(Cursor).where(Cursor.listing == RATE_LIMIT_LISTING)
        ).all()
    assert len(rows) == 1


def test_reconcile_saves_rate_limit(runner: ProviderRunner, store: Store) -> None:
    """A reconcile saves the state like a poll does."""
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(
            return_value=page_response("evt_1", headers=GITHUB_HEADERS)
        )
        report = runner.reconcile()

    state = saved_state(store)
    assert report.ok, report.error
    assert state is not None
    assert state["remaining"] == 4999


def test_state_commits_with_page(runner: ProviderRunner, store: Store) -> None:
    """The page's events and the state it saved are both stored."""
    poll_once(runner, page_response("evt_1", headers=GITHUB_HEADERS))

    with store.session() as session:
        keys = session.scalars(select(Event.key)).all()
    assert keys == ["evt_1"]
    assert saved_state(store) is not None


def test_status_reads_saved_state(runner: ProviderRunner, store: Store) -> None:
    """provider_status shows the saved state and keeps it out of the cursors."""
    poll_once(runner, page_response("evt_1", headers=GITHUB_HEADERS))

    status = provider_status(store, "payments", "polling")

    assert status.rate_limit == saved_state(store)
    assert RATE_LIMIT_LISTING not in status.cursors
    assert RATE_LIMIT_LISTING not in status.cursor_lag_seconds


def test_save_empty_state_keeps_last(store: Store) -> None:
    """Saving an empty state leaves the last saved one in place."""
    now = datetime.fromtimestamp(T0, UTC)
    with store.session() as session:
        save_rate_limit(session, "payments", {"remaining": 7}, now)
    with store.session() as session:
        save_rate_limit(session, "payments", {}, now)

    assert saved_state(store) == {"remaining": 7}


# Reading the headers


def headers_of(**headers: str) -> dict[str, Any]:
    response = httpx.Response(200, headers=headers)
    return read_rate_limit_headers(response, T0)


def test_read_headers_unix_reset() -> None:
    """A reset in Unix time is kept as that time."""
    figures = headers_of(**GITHUB_HEADERS)

    assert figures["reset_at"] == "2024-05-01T10:10:00.000000Z"


def test_read_headers_relative_reset() -> None:
    """A small reset value is read as seconds from now."""
    figures = headers_of(**{"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "90"})

    assert figures["reset_at"] == "2024-05-01T10:01:30.000000Z"


def test_read_headers_without_remaining() -> None:
    """Without X-RateLimit-Remaining there is nothing to save."""
    assert headers_of(**{"X-RateLimit-Limit": "5000"}) == {}


@pytest.mark.parametrize("reset", ["soon", "inf", "nan", "-5", "1e300"])
def test_read_headers_unreadable_reset(reset: str) -> None:
    """An unreadable reset is left out; the remaining count is kept."""
    figures = headers_of(**{"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": reset})

    assert figures == {"observed_at": T0_ISO, "remaining": 5}


def test_read_headers_unreadable_remaining() -> None:
    """A remaining count that is not a whole number is not saved."""
    assert headers_of(**{"X-RateLimit-Remaining": "lots"}) == {}
