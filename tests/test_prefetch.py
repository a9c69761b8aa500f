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
from syncd.prefetch import AHEAD, PageFetches
from syncd.store import Store

T0 = 1714557600  # 2024-05-01T10:00:00Z
API = "http://127.0.0.1:9"
WAIT = 10.0  # seconds a test waits for another thread before it fails

FIRST = PageRequest("/first")
SECOND = PageRequest("/second")


# PageFetches on its own

THIRD = PageRequest("/third")
CHAIN = {FIRST: SECOND, SECOND: THIRD, THIRD: None}


def follow_chain(url: str) -> PageRequest | None:
    """The next page of a three-page listing: first, second, third."""
    return CHAIN.get(PageRequest(url))


class Recorder:
    """A fetch that records each request and its validators, and returns the URL."""

    def __init__(self) -> None:
        self.calls: list[tuple[PageRequest, Any]] = []

    def __call__(self, request: PageRequest, validators: Any) -> str:
        self.calls.append((request, validators))
        return request.url

    @property
    def requests(self) -> list[PageRequest]:
        return [request for request, _ in self.calls]


def test_first_get_fetches_with_validators() -> None:
    fetch = Recorder()
    with PageFetches(fetch, lambda _url: None) as pages:
        assert pages.get(FIRST, {"etag": "x"}) == "/first"
    assert fetch.calls == [(FIRST, {"etag": "x"})]


def test_pages_follow_in_order_without_validators() -> None:
    fetch = Recorder()
    with PageFetches(fetch, follow_chain) as pages:
        assert pages.get(FIRST, {"etag": "x"}) == "/first"
        assert pages.get(SECOND) == "/second"
        assert pages.get(THIRD) == "/third"
    assert fetch.calls == [(FIRST, {"etag": "x"}), (SECOND, None), (THIRD, None)]


def test_get_other_request_fetches_it() -> None:
    fetch = Recorder()
    other = PageRequest("/other")
    with PageFetches(fetch, follow_chain) as pages:
        assert pages.get(FIRST) == "/first"
        assert pages.get(other) == "/other"
    assert fetch.requests[0] == FIRST
    assert fetch.requests[-1] == other


def test_get_after_last_page_fetches_now() -> None:
    fetch = Recorder()
    with PageFetches(fetch, follow_chain) as pages:
        for request in (FIRST, SECOND, THIRD):
            pages.get(request)
        assert pages.get(FIRST) == "/first"
    assert fetch.requests[:4] == [FIRST, SECOND, THIRD, FIRST]


def test_error_raised_after_pages_before_it() -> None:
    def fetch(request: PageRequest, _validators: Any) -> str:
        if request == SECOND:
            raise AuthenticationError(f"{request.url} rejected")
        return request.url

    with PageFetches(fetch, follow_chain) as pages:
        assert pages.get(FIRST) == "/first"
        with pytest.raises(AuthenticationError, match="/second rejected"):
            pages.get(SECOND)


def test_interrupt_in_worker_raised_by_get() -> None:
    def fetch(request: PageRequest, _validators: Any) -> str:
        if request == SECOND:
            raise KeyboardInterrupt
        return request.url

    with PageFetches(fetch, follow_chain) as pages:
        assert pages.get(FIRST) == "/first"
        with pytest.raises(KeyboardInterrupt):
            pages.get(SECOND)


def test_worker_stays_at_most_ahead_pages_ahead() -> None:
    """While the caller keeps one page, the worker fetches AHEAD more, no further."""
    calls: list[PageRequest] = []
    fetched_ahead = threading.Event()

    def fetch(request: PageRequest, _validators: Any) -> int:
        calls.append(request)
        if len(calls) == 1 + AHEAD:
            fetched_ahead.set()
        return len(calls)

    with PageFetches(fetch, lambda n: PageRequest(f"/{n + 1}")) as pages:
        assert pages.get(PageRequest("/1")) == 1
        assert fetched_ahead.wait(WAIT)
        time.sleep(0.2)  # time for a fetch beyond the limit, if it were made
        assert len(calls) == 1 + AHEAD
        assert pages.get(PageRequest("/2")) == 2
    assert len(calls) <= 2 + AHEAD


def test_worker_stops_at_a_page_it_fetched() -> None:
    """A listing whose next page points back is fetched once; the caller sees it."""
    fetch = Recorder()
    loop = {"/first": SECOND, "/second": FIRST}
    with PageFetches(fetch, loop.get) as pages:
        assert pages.get(FIRST) == "/first"
        assert pages.get(SECOND) == "/second"
        time.sleep(0.2)  # time for a third fetch, if it were made
    assert fetch.requests == [FIRST, SECOND]


def test_exit_waits_for_fetch_running() -> None:
    finished = threading.Event()

    def fetch(request: PageRequest, _validators: Any) -> str:
        if request == SECOND:
            time.sleep(0.2)
            finished.set()
        return request.url

    with PageFetches(fetch, follow_chain) as pages:
        pages.get(FIRST)
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
