"""The listing loop: fetch a page, commit its events and progress, go on.

Each page's events and the progress that covers them are committed in one
transaction, so a crash between pages re-reads at most one page. Polling
keeps its progress in the cursor table; a cursor's ``high_water`` is the
newest provider time that a completed run saw, and the next run starts
``lookback`` before it so that events which became visible late are listed
again.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from sqlalchemy.orm import Session

from connectors.base import Connector, Page, PageRequest, Window, record_problem
from syncd.errors import ResponseError
from syncd.fetch import Fetcher
from syncd.gaps import GapNotice
from syncd.pacing import server_poll_interval
from syncd.prefetch import PageFetches
from syncd.quarantine import quarantine_items
from syncd.rate_limit_state import fetch_keeping_rate_limit, save_rate_limit
from syncd.store import Store, WriteResult, load_cursor, record_events, save_cursor
from syncd.units import format_age, format_duration, parse_time, to_utc_iso

log = logging.getLogger(__name__)


@dataclass
class TypeCounts:
    """Counts of one event type in a run."""

    listed: int = 0
    new: int = 0
    already: int = 0


@dataclass
class RunReport:
    """The counts and outcome of one poll or reconcile run of one provider."""

    provider: str
    kind: str
    source: str
    window: Window
    listed: int = 0
    new: int = 0
    already: int = 0
    pages: int = 0
    requests: int = 0
    by_type: dict[str, TypeCounts] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    not_modified: bool = False
    skipped: bool = False
    gaps: list[GapNotice] = field(default_factory=list)
    quarantined: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def add(self, result: WriteResult, listed: list[Any]) -> None:
        """Count one page's records and what storing them did."""
        self.pages += 1
        self.listed += len(listed)
        self.new += len(result.new)
        self.already += len(result.duplicates)
        for kind, count in Counter(map(_TYPE_OF, listed)).items():
            self.by_type.setdefault(kind, TypeCounts()).listed += count
        for kind, count in Counter(map(_TYPE_OF, result.new)).items():
            self.by_type[kind].new += count
        for kind, count in Counter(map(_TYPE_OF, result.duplicates)).items():
            self.by_type[kind].already += count


_TYPE_OF = attrgetter("type")

PageHook = Callable[[Session, Page, httpx.Response], None]

# Conditional polls: after this many 304s in a row, or this long since the
# last full answer, send one request without validators, because some
# servers keep answering 304 after new data exists.
MAX_NOT_MODIFIED = 10
MAX_CONDITIONAL_AGE = timedelta(minutes=15)
_PACING_KEYS = ("validators", "not_modified", "full_answer_at", "not_before")


def run_listing(
    store: Store,
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    report: RunReport,
    *,
    start: PageRequest | None = None,
    on_page: PageHook | None = None,
    validators: dict[str, str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> httpx.Response | None:
    """List ``report.window`` page by page, committing each page as it comes.

    ``on_page`` runs inside each page's transaction (to save a cursor).
    ``validators`` make the first request conditional; a 304 ends the run
    with ``report.not_modified`` set. Returns the first response. A failure
    raises after the pages before it are committed.
    """
    request = start or connector.first_request(listing, report.window)
    first: httpx.Response | None = None
    seen: set[PageRequest] = set()

    def fetch_page(
        page_request: PageRequest, conditions: dict[str, str] | None
    ) -> tuple[httpx.Response, Page | None]:
        """Fetch and parse one page. The page is None for a 304."""
        now = clock()
        response = fetch_keeping_rate_limit(
            store, fetcher, page_request, conditions, now
        )
        if response.status_code == 304:
            return response, None
        page = _parse_page(connector, fetcher, listing, page_request, response)
        return response, page

    # The next pages are fetched and parsed while this one is stored.
    with (
        store.connection() as connection,
        PageFetches(fetch_page, _next_request) as pages,
    ):
        while request is not None:
            check_not_seen(listing, request, seen)
            response, page = pages.get(request, validators if first is None else None)
            first = first or response
            if page is None:
                report.not_modified = True
                return first
            _set_aside_bad_records(page)
            _store_page(
                store.session(connection),
                connector,
                fetcher,
                listing,
                report,
                page,
                response,
                on_page,
                clock,
            )
            request = page.next
    return first


def _next_request(fetched: tuple[httpx.Response, Page | None]) -> PageRequest | None:
    page = fetched[1]
    return None if page is None else page.next


def check_not_seen(listing: str, request: PageRequest, seen: set[PageRequest]) -> None:
    """Add ``request`` to ``seen``, or raise ResponseError if it is there already."""
    if request in seen:
        raise ResponseError(
            f"the next page of {listing} is one already read in this run "
            f"({_describe_request(request)}); the provider's pagination loops"
        )
    seen.add(request)


# Parameter names that suggest a credential, masked in messages.
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig", re.IGNORECASE)


def _describe_request(request: PageRequest) -> str:
    """Return the request's URL with its query parameters, for messages.

    Connectors send the API token in a header. A parameter whose name
    suggests a credential (a rest listing's ``params`` may hold one) is
    shown as ``***``.
    """
    if not request.params:
        return request.url
    masked_params = [
        (name, "***" if _SECRET_PARAM.search(name) else value)
        for name, value in request.params
    ]
    separator = "&" if "?" in request.url else "?"
    return request.url + separator + urlencode(masked_params, safe="[]*")


def _store_page(
    transaction: AbstractContextManager[Session],
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    report: RunReport,
    page: Page,
    response: httpx.Response,
    on_page: PageHook | None,
    clock: Callable[[], datetime],
) -> None:
    """Commit one page, with its progress and rate-limit state, then count it.

    The transaction (a :meth:`Store.session`) contains the page's events and
    quarantined items, the ``on_page`` writes and the fetcher's rate-limit
    state.
    """
    with transaction as session:
        seen_at = clock()
        result = record_events(
            session, connector.provider.name, report.source, page.records, seen_at
        )
        quarantine_items(
            session, connector.provider.name, listing, page.rejected, seen_at
        )
        if on_page is not None:
            on_page(session, page, response)
        # Last, so a transaction waits for no other lock while holding this row.
        name = connector.provider.name
        save_rate_limit(session, name, fetcher.rate_limit_state(), seen_at)
    report.add(result, page.records)
    _note_quarantined(connector, listing, report, page)
    report.notes.extend(page.notes)
    _note_capped_feed(connector, listing, report, page)


def _parse_page(
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    request: PageRequest,
    response: httpx.Response,
) -> Page:
    """Return the connector's page; a ResponseError names the listing and URL."""
    try:
        return connector.parse_page(listing, request, response)
    except ResponseError as exc:
        url = urlsplit(fetcher.url_of(request))._replace(query="").geturl()
        raise ResponseError(
            f"listing {listing}: GET {url} returned {response.status_code} with a "
            f"body syncd cannot read: {exc}; the cursor stays where it was and "
            "the next run retries"
        ) from exc


def _set_aside_bad_records(page: Page) -> None:
    """Move records the log cannot store (see record_problem) to page.rejected."""
    good = []
    for record in page.records:
        problem = record_problem(record)
        if problem is None:
            good.append(record)
        else:
            page.rejected.append((record.payload, problem))
    page.records = good


def _note_quarantined(
    connector: Connector, listing: str, report: RunReport, page: Page
) -> None:
    if not page.rejected:
        return
    report.quarantined += len(page.rejected)
    first_reason = page.rejected[0][1]
    message = (
        f"{len(page.rejected)} item(s) of {listing} could not be read and were "
        f"quarantined (first: {first_reason[:200]})"
    )
    report.notes.append(message)
    log.warning("%s: %s", connector.provider.name, message)


def _note_capped_feed(
    connector: Connector, listing: str, report: RunReport, page: Page
) -> None:
    since = report.window.since
    if page.gap_before is None or since is None or page.gap_before <= since:
        return
    recoverable = connector.reconcile_listings() != connector.listings()
    report.gaps.append(
        GapNotice(
            listing,
            since,
            page.gap_before,
            "the feed returned only its newest entries, none as old as the cursor",
            recoverable,
        )
    )


def poll_listing(
    store: Store,
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    now: datetime,
    on_report: Callable[[RunReport], None] | None = None,
) -> RunReport:
    """Run one cursor-driven poll of a listing and return its report.

    The poll is skipped while the server's requested interval has not passed.
    ``on_report`` gets the report before the first request, so that a caller
    can count the pages stored before an error.
    """
    name = connector.provider.name
    with store.session() as session:
        state = load_cursor(session, name, listing)
    window, start, state = _resume_or_begin(connector, state, now)
    report = RunReport(name, "poll", "poll", window)
    if on_report is not None:
        on_report(report)
    if _too_early(state, now):
        report.skipped = True
        return report
    if start is None:
        window, gap = clamp_to_retention(connector, window, now)
        report.window = window
        if gap is not None:
            report.gaps.append(GapNotice(listing, *gap))
            state["since"] = to_utc_iso(window.since) if window.since else None

    first_request = start or connector.first_request(listing, window)
    validators = _validators(state, first_request, start, now)
    started = time.monotonic()
    try:
        first = run_listing(
            store,
            connector,
            fetcher,
            listing,
            report,
            start=first_request,
            on_page=lambda session, page, response: _save_page_progress(
                session, name, listing, state, page, now
            ),
            validators=validators,
            clock=lambda: now,
        )
    except ResponseError as exc:
        if start is None or report.pages:
            raise
        _drop_saved_page(store, name, listing, state, now)
        raise ResponseError(
            f"{exc}; the provider rejected the saved page cursor (an event "
            "it points at may have expired), so the next poll lists the "
            "window again from its start"
        ) from exc
    report.seconds = time.monotonic() - started
    _after_run(store, connector, listing, state, report, first, first_request, now)
    return report


def _drop_saved_page(
    store: Store, name: str, listing: str, state: dict[str, Any], now: datetime
) -> None:
    """Forget the page a poll was to resume from, keeping the rest of the cursor.

    The next poll starts from the high-water mark again, which the stored
    pages did not move, so their events are listed again as duplicates.
    """
    state["next"] = None
    with store.session() as session:
        save_cursor(session, name, listing, state, now)


def _save_page_progress(
    session: Session,
    name: str,
    listing: str,
    state: dict[str, Any],
    page: Page,
    now: datetime,
) -> None:
    newest = max((r.occurred_at for r in page.records), default=None)
    state["seen_max"] = _later(state.get("seen_max"), newest)
    state["next"] = page.next.to_json() if page.next else None
    if page.next is None:
        seen_max = state.pop("seen_max")
        newest_seen = parse_time(seen_max) if seen_max else None
        if newest_seen is not None:
            capped = _within_skew(newest_seen, now)
            if capped != newest_seen:
                _log_future_time(name, listing, newest_seen, now)
            newest_seen = capped
        high_water = _later(state.get("high_water"), newest_seen)
        state.update(high_water=high_water, since=None)
    save_cursor(session, name, listing, state, now)


# How far provider times may run ahead of this host's clock and still move
# the high-water mark, as clock skew. An estimate, not a published figure.
FUTURE_TOLERANCE = timedelta(minutes=15)


# The far-future time last logged per (provider, listing). Each poll lists
# such an event again, so the WARNING is repeated only for a new time.
_future_logged: dict[tuple[str, str], datetime] = {}


def _within_skew(moment: datetime, now: datetime) -> datetime:
    """Return ``moment``, or ``now`` when it is further ahead than clock skew.

    The next poll starts ``lookback`` before the high-water mark, so one
    event dated in the future would otherwise move it past every event still
    to come. Starting from this host's time instead only lists more again.
    """
    return now if moment - now > FUTURE_TOLERANCE else moment


def _log_future_time(name: str, listing: str, newest: datetime, now: datetime) -> None:
    """Log an event time too far ahead of this host's clock, once per time."""
    if _future_logged.get((name, listing)) == newest:
        return
    _future_logged[(name, listing)] = newest
    log.warning(
        "%s: listing %s has an event dated %s, %s ahead of this host's "
        "clock; the next poll starts from this host's time instead. Check "
        "this host's clock and the provider's event times",
        name,
        listing,
        to_utc_iso(newest),
        format_age((newest - now).total_seconds()),
    )


def _too_early(state: dict[str, Any], now: datetime) -> bool:
    not_before = state.get("not_before")
    return not state.get("next") and bool(not_before) and parse_time(not_before) > now


def _validators(
    state: dict[str, Any],
    request: PageRequest,
    resumed: PageRequest | None,
    now: datetime,
) -> dict[str, str] | None:
    """Return the validators to send, or None for an unconditional request."""
    stored = state.get("validators")
    if resumed is not None or not stored or stored["request"] != request.to_json():
        return None
    if state.get("not_modified", 0) >= MAX_NOT_MODIFIED:
        return None
    full_at = state.get("full_answer_at")
    if not full_at or now - parse_time(full_at) >= MAX_CONDITIONAL_AGE:
        return None
    return {k: v for k, v in stored.items() if k in ("etag", "last_modified") and v}


def _after_run(
    store: Store,
    connector: Connector,
    listing: str,
    state: dict[str, Any],
    report: RunReport,
    first: httpx.Response | None,
    first_request: PageRequest,
    now: datetime,
) -> None:
    """Store validators and the server's poll interval after a run."""
    if first is None:
        return
    if report.not_modified:
        state["not_modified"] = state.get("not_modified", 0) + 1
    else:
        state["not_modified"] = 0
        state["full_answer_at"] = to_utc_iso(now)
        state["validators"] = _new_validators(first, first_request)
    interval = _next_interval(connector, first)
    state["not_before"] = to_utc_iso(now + interval) if interval else None
    with store.session() as session:
        save_cursor(session, connector.provider.name, listing, state, now)


def _new_validators(
    response: httpx.Response, request: PageRequest
) -> dict[str, Any] | None:
    etag = response.headers.get("etag")
    last_modified = response.headers.get("last-modified")
    if not etag and not last_modified:
        return None
    return {"request": request.to_json(), "etag": etag, "last_modified": last_modified}


def _next_interval(connector: Connector, response: httpx.Response) -> timedelta | None:
    seconds, problem = server_poll_interval(response)
    if problem is not None:
        backoff = connector.provider.poll_interval * 2
        log.warning(
            "%s: %s; waiting %s before the next poll",
            connector.provider.name,
            problem,
            format_duration(backoff),
        )
        return backoff
    return timedelta(seconds=seconds) if seconds else None


def _later(stored: str | None, candidate: datetime | None) -> str | None:
    """Return the later of a stored ISO time and a new one, as ISO text."""
    if candidate is None:
        return stored
    if stored is not None and parse_time(stored) >= candidate:
        return stored
    return to_utc_iso(candidate)


def _resume_or_begin(
    connector: Connector, state: dict[str, Any], now: datetime
) -> tuple[Window, PageRequest | None, dict[str, Any]]:
    """Return the window, the request to resume from, and the state to keep.

    The high-water mark is the newest provider time seen by a completed run,
    so a clock difference between this host and the provider never moves it.
    """
    if state.get("next"):
        since = parse_time(state["since"]) if state.get("since") else None
        return (
            Window(since=since, until=None),
            PageRequest.from_json(state["next"]),
            state,
        )

    settings = connector.provider
    if state.get("origin"):
        origin = parse_time(state["origin"])
    else:
        origin = _origin(settings.start_from, now)
    since = origin
    if state.get("high_water"):
        # A mark far ahead was saved by an older syncd, or before this host's
        # clock went back.
        high_water = _within_skew(parse_time(state["high_water"]), now)
        since = max(origin, high_water - settings.lookback)
    kept = {key: state[key] for key in _PACING_KEYS if key in state}
    state = {
        **kept,
        "origin": to_utc_iso(origin),
        "high_water": state.get("high_water"),
        "since": to_utc_iso(since),
        "next": None,
    }
    return Window(since=since, until=None), None, state


def _origin(start_from: str | datetime, now: datetime) -> datetime:
    return now if start_from == "now" else parse_time(start_from)


def clamp_to_retention(
    connector: Connector, window: Window, now: datetime
) -> tuple[Window, tuple[datetime, datetime, str, bool] | None]:
    """Cut a window to what the provider still keeps.

    Returns the window and, when it was cut, the lost span, its reason, and
    whether a reconcile through resource listings can still cover it.
    """
    retention: timedelta | None = connector.retention
    if retention is None or window.since is None:
        return window, None
    oldest = now - retention
    if window.since >= oldest:
        return window, None
    reason = f"older than the provider's {retention.days}-day retention"
    recoverable = connector.reconcile_listings() != connector.listings()
    gap = (window.since, oldest, reason, recoverable)
    return Window(since=oldest, until=window.until), gap
