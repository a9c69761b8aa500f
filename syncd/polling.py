"""The listing loop: fetch a page, commit its events and progress, go on.

Each page's events and the progress that covers them are committed in one
transaction, so a crash between pages re-reads at most one page. Polling
keeps its progress in the cursor table; a cursor's ``high_water`` is the
``until`` of the last completed run, and the next run starts ``lookback``
before it so that events which became visible late are listed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from connectors.base import Connector, Page, PageRequest, Window
from syncd.fetch import Fetcher
from syncd.store import Store, WriteResult, load_cursor, record_events, save_cursor
from syncd.units import parse_time, to_utc_iso

log = logging.getLogger(__name__)


@dataclass
class TypeCounts:
    """Counts of one event type in a run."""

    listed: int = 0
    new: int = 0
    already: int = 0


@dataclass
class RunReport:
    """What one poll or reconcile run of one provider found."""

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

    @property
    def ok(self) -> bool:
        return self.error is None

    def add(self, result: WriteResult, listed: list[Any]) -> None:
        """Count one page's records and what storing them did."""
        self.pages += 1
        self.listed += len(listed)
        self.new += len(result.new)
        self.already += len(result.duplicates)
        for record in listed:
            self.by_type.setdefault(record.type, TypeCounts()).listed += 1
        for record in result.new:
            self.by_type[record.type].new += 1
        for record in result.duplicates:
            self.by_type[record.type].already += 1


PageHook = Callable[[Session, Page], None]


def run_listing(
    store: Store,
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    report: RunReport,
    *,
    start: PageRequest | None = None,
    on_page: PageHook | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """List ``report.window`` page by page, committing each page as it comes.

    ``on_page`` runs inside each page's transaction (to save a cursor). A
    failure raises after the pages before it are committed.
    """
    request = start or connector.first_request(listing, report.window)
    while request is not None:
        response = fetcher.fetch(request)
        page = connector.parse_page(listing, request, response)
        with store.session() as session:
            result = record_events(
                session, connector.provider.name, report.source, page.records, clock()
            )
            if on_page is not None:
                on_page(session, page)
        report.add(result, page.records)
        report.notes.extend(page.notes)
        request = page.next


def poll_listing(
    store: Store,
    connector: Connector,
    fetcher: Fetcher,
    listing: str,
    now: datetime,
) -> RunReport:
    """Run one cursor-driven poll of a listing and return its report."""
    name = connector.provider.name
    with store.session() as session:
        state = load_cursor(session, name, listing)
    window, start, state = _resume_or_begin(connector, state, now)
    report = RunReport(name, "poll", "poll", window)

    def save_progress(session: Session, page: Page) -> None:
        progress = dict(state, next=page.next.to_json() if page.next else None)
        if page.next is None:
            progress.update(high_water=to_utc_iso(window.until), since=None, until=None)
        save_cursor(session, name, listing, progress, now)

    started = time.monotonic()
    run_listing(
        store, connector, fetcher, listing, report, start=start, on_page=save_progress
    )
    report.seconds = time.monotonic() - started
    return report


def _resume_or_begin(
    connector: Connector, state: dict[str, Any], now: datetime
) -> tuple[Window, PageRequest | None, dict[str, Any]]:
    """Return the window, the request to resume from, and the state to keep."""
    if state.get("next"):
        since = parse_time(state["since"]) if state.get("since") else None
        window = Window(since=since, until=parse_time(state["until"]))
        return window, PageRequest.from_json(state["next"]), state

    settings = connector.provider
    origin = (
        parse_time(state["origin"])
        if state.get("origin")
        else _origin(settings.start_from, now)
    )
    since = origin
    if state.get("high_water"):
        since = max(origin, parse_time(state["high_water"]) - settings.lookback)
    window = Window(since=since, until=now)
    state = {
        "origin": to_utc_iso(origin),
        "high_water": state.get("high_water"),
        "since": to_utc_iso(since),
        "until": to_utc_iso(now),
    }
    return window, None, state


def _origin(start_from: str | datetime, now: datetime) -> datetime:
    return now if start_from == "now" else parse_time(start_from)


def clamp_to_retention(
    connector: Connector, window: Window, now: datetime
) -> tuple[Window, str | None]:
    """Cut a window to what the provider still keeps, with a note on the gap."""
    retention: timedelta | None = connector.retention
    if retention is None or window.since is None:
        return window, None
    oldest = now - retention
    if window.since >= oldest:
        return window, None
    note = (
        f"events from {to_utc_iso(window.since)} to {to_utc_iso(oldest)} are older "
        f"than the provider's {retention.days}-day retention and cannot be listed"
    )
    return Window(since=oldest, until=window.until), note
