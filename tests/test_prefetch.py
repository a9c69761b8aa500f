"""Fetching the next listing page while the current one is stored."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from connectors.base import PageRequest, Window
from connectors.stripe import StripeConnector
from syncd import config
from syncd.errors import AuthenticationError
from syncd.fetch import Fetcher
from syncd.models import Event
from syncd.polling import RunReport, run_listing
from syncd.prefetch import PageFetches
from syncd.store import Store

T0 = 1714557600  # 2024-05-01T10:00:00Z
API = "http://127.0.0.1:9"
WAIT = 10.0  # seconds a test waits for another thread before it fails

FIRST = PageRequest("/first")
SECOND = PageRequest("/second")


# PageFetches on its own


def test_get_without_ahead_fetches_now() -> None:
    calls: list[tuple[PageRequest, Any]] = []
    with PageFetches(lambda r, v: calls.append((r, v)) or r.url) as pages:
        assert pages.get(FIRST, {"etag": "x"}) == "/first"
    assert calls == [(FIRST, {"etag": "x"})]


def test_get_returns_page_fetched_ahead() -> None:
    calls: list[tuple[PageRequest, Any]] = []
    with PageFetches(lambda r, v: calls.append((r, v)) or r.url) as pages:
        pages.fetch_ahead(SECOND)
        assert pages.get(SECOND) == "/second"
    assert calls == [(SECOND, None)]


def test_get_other_request_fetches_it() -> None:
    calls: list[PageRequest] = []
    with PageFetches(lambda r, v: calls.append(r) or r.url) as pages:
        pages.fetch_ahead(SECOND)
        assert pages.get(FIRST) == "/first"
    assert sorted(r.url for r in calls) == ["/first", "/second"]


def test_error_ahead_raised_by_get() -> None:
    def fetch(request: PageRequest, _validators: Any) -> str:
        raise AuthenticationError(f"{request.url} rejected")

    with PageFetches(fetch) as pages:
        pages.fetch_ahead(SECOND)
        with pytest.raises(AuthenticationError, match="/second rejected"):
            pages.get(SECOND)


def test_second_fetch_ahead_rejected() -> None:
    with PageFetches(lambda r, v: r.url) as pages:
        pages.fetch_ahead(FIRST)
        with pytest.raises(RuntimeError):
            pages.fetch_ahead(SECOND)


def test_exit_waits_for_fetch_ahead() -> None:
    finished = threading.Event()

    def fetch(request: PageRequest, _validators: Any) -> str:
        time.sleep(0.2)
        finished.set()
        return request.url

    with PageFetches(fetch) as pages:
        pages.fetch_ahead(SECOND)
    assert finished.is_set()


# run_listing with a Stripe listing of two pages


def event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "invoice.paid",
        "created": T0 - 60,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }


def page_body(event_id: str, has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": [event(event_id)], "has_more": has_more}


class TwoPages:
    """A mock Stripe API: page 1 has evt_1, page 2 (after evt_1) has evt_2."""

    def __init__(self, second: httpx.Response | None = None) -> None:
        self.second = second or httpx.Response(200, json=page_body("evt_2", False))
        self.second_requested = threading.Event()
        self.release_second = threading.Event()
        self.release_second.set()
        self.second_finished = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if "starting_after" not in request.url.params:
            return httpx.Response(200, json=page_body("evt_1", True))
        self.second_requested.set()
        self.release_second.wait(WAIT)
        time.sleep(0.1)
        self.second_finished.set()
        return self.second


@pytest.fixture
def connector(store: Store) -> StripeConnector:
    settings = config.parse(
        {
            "daemon": {"database": store.url},
            "providers": {
                "payments": {
                    "connector": "stripe",
                    "api_base_url": API,
                    "api_token": "sk_test_prefetch",
                    "max_attempts": 1,
                }
            },
        }
    )
    return StripeConnector(settings.providers["payments"])


@pytest.fixture
def api() -> TwoPages:
    return TwoPages()


@pytest.fixture
def fetcher(connector: StripeConnector, api: TwoPages) -> Iterator[Fetcher]:
    with httpx.Client(transport=httpx.MockTransport(api)) as client:
        yield Fetcher(connector, client, sleep=lambda _: None)


def listing_report() -> RunReport:
    window = Window(since=datetime(2024, 5, 1, tzinfo=UTC), until=None)
    return RunReport("payments", "poll", "poll", window)


def stored_keys(store: Store) -> list[str]:
    with store.session() as session:
        return sorted(session.scalars(select(Event.key)))


def test_next_page_fetched_during_commit(
    store: Store, connector: StripeConnector, fetcher: Fetcher, api: TwoPages
) -> None:
    """Page 2 is requested while page 1's transaction is still open."""
    requested_in_transaction: list[bool] = []

    def on_page(_session: Any, page: Any, _response: Any) -> None:
        if page.next is not None:
            requested_in_transaction.append(api.second_requested.wait(WAIT))

    report = listing_report()
    run_listing(store, connector, fetcher, "events", report, on_page=on_page)
    assert requested_in_transaction == [True]
    assert stored_keys(store) == ["evt_1", "evt_2"]
    assert fetcher.requests == 2


def test_failed_page_after_committed_page(store: Store, connector, api) -> None:
    """A failure of page 2, fetched ahead, is raised after page 1 committed."""
    api.second = httpx.Response(401, json={"error": {"message": "bad key"}})
    committed: list[str] = []

    def on_page(_session: Any, page: Any, _response: Any) -> None:
        committed.extend(record.key for record in page.records)

    with httpx.Client(transport=httpx.MockTransport(api)) as client:
        fetcher = Fetcher(connector, client, sleep=lambda _: None)
        with pytest.raises(AuthenticationError):
            run_listing(
                store, connector, fetcher, "events", listing_report(), on_page=on_page
            )
    assert committed == ["evt_1"]
    assert stored_keys(store) == ["evt_1"]


def test_store_failure_waits_for_fetch_ahead(
    store: Store, connector: StripeConnector, fetcher: Fetcher, api: TwoPages
) -> None:
    """A run that fails while storing returns only once the page ahead arrived."""
    api.release_second.clear()

    def on_page(_session: Any, _page: Any, _response: Any) -> None:
        api.second_requested.wait(WAIT)
        api.release_second.set()
        raise RuntimeError("storing page 1 failed")

    with pytest.raises(RuntimeError, match="storing page 1 failed"):
        run_listing(
            store, connector, fetcher, "events", listing_report(), on_page=on_page
        )
    assert api.second_finished.is_set()
    assert stored_keys(store) == []
