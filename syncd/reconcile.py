"""Poll and reconcile runs of one provider, with their run records and reports.

A reconcile lists a window of the provider's history and adds every event
the log lacks. With webhooks on, each such event is a missed webhook: it is
counted by type, logged at WARNING, and stored with ``first_source =
"reconcile"``. After downtime the window reaches back to where the last
successful reconcile ended, so an outage longer than ``reconcile_window``
still leaves no hole, within the provider's retention.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, select

from connectors.base import Connector, PageRequest, Window
from syncd.errors import ProviderError, StoppingError, StoreUnavailableError
from syncd.fetch import Fetcher
from syncd.gaps import GapNotice, record_gap, resolve_gap
from syncd.metrics import Metrics
from syncd.models import Event, Run
from syncd.pacing import RateBudgets
from syncd.polling import (
    RunReport,
    check_not_seen,
    clamp_to_retention,
    poll_listing,
    run_listing,
)
from syncd.rate_limit_state import clear_passed_block, save_rate_limit
from syncd.store import Store, load_cursor, save_cursor
from syncd.units import parse_time, to_utc_iso

log = logging.getLogger(__name__)

KEEP_RUNS = 1000  # run records kept per provider and kind
ORIGIN_LISTING = "@origin"  # cursor row that records a provider's first start
# How long before now a scheduled reconcile's window ends. An estimate of how
# late a webhook may still arrive, not a figure any provider publishes.
WEBHOOK_SETTLE = timedelta(seconds=60)


REPEAT_LOG_SECONDS = 3600.0  # between ERROR lines of one repeated failure


@dataclass
class _Repeats:
    """A run failure seen again and again, counted between its log lines."""

    failure: tuple[str, str | None]
    since: float
    logged_at: float
    count: int = 1


class ProviderRunner:
    """Runs the polls and reconciles of one provider."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        client: httpx.Client,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        budgets: RateBudgets | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.store = store
        self.connector = connector
        self.client = client
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.sleep = sleep
        self.stopping = stopping
        self.budgets = budgets or RateBudgets(clock)
        # When runs began to fail because the store was unavailable.
        self._store_down_since: datetime | None = None
        self._repeats: _Repeats | None = None
        self._failed_on_store = False
        # Ends of runs that the store was down to record, written before the
        # next run: (run id, report, status, finished at).
        self._unrecorded_ends: list[tuple[int, RunReport, str, datetime]] = []

    @property
    def name(self) -> str:
        return self.connector.provider.name

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def poll(self, trigger: str = "schedule") -> list[RunReport]:
        """Poll every listing from its cursor; return one report per listing."""
        reports = []
        for listing in self.connector.listings():
            fetcher = self._fetcher()
            partial: list[RunReport] = []
            report = self._recorded(
                "poll",
                trigger,
                lambda f=fetcher, li=listing, p=partial: poll_listing(
                    self.store, self.connector, f, li, self._now(), on_report=p.append
                ),
                fetcher,
                partial=partial,
            )
            self._handle_gaps(report)
            reports.append(report)
        return reports

    def _handle_gaps(self, report: RunReport) -> None:
        """Record each gap a run found and reconcile the ones that can be covered."""
        for notice in report.gaps:
            gap_id = record_gap(self.store, self.name, notice, self._now())
            report.notes.append(notice.describe())
            if not notice.recoverable:
                continue
            covered = self.reconcile(notice.since, notice.until, trigger="gap")
            if covered.ok:
                resolve_gap(self.store, gap_id, self._now())

    def reconcile(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        dry_run: bool = False,
        trigger: str = "schedule",
    ) -> RunReport:
        """List a window of every listing and add what the log lacks."""
        now = self._now()
        chosen = since is not None
        since = since or self._default_since(now)
        if until is None:
            until = self._default_until(now, since, trigger)
        window = Window(since=since, until=until)
        listings = self.connector.reconcile_listings()
        gap = None
        if listings == self.connector.listings():
            window, gap = clamp_to_retention(self.connector, window, now)
        fetcher = self._fetcher()
        report = RunReport(self.name, "reconcile", "reconcile", window)
        if not chosen and trigger == "command":
            self._note_start_from_now(report, since, now)

        def run() -> RunReport:
            if gap is not None:
                # A window asked for by hand reports its cut in the output; only
                # a scheduled run's cut is a gap in the log that status shows.
                notice = GapNotice(",".join(listings), *gap)
                if not dry_run and trigger != "command":
                    record_gap(self.store, self.name, notice, now)
                report.notes.append(notice.describe())
            started = time.monotonic()
            for listing in listings:
                if dry_run:
                    self._dry_run_listing(fetcher, listing, report)
                else:
                    run_listing(
                        self.store,
                        self.connector,
                        fetcher,
                        listing,
                        report,
                        clock=self._now,
                    )
            report.seconds = time.monotonic() - started
            return report

        if dry_run:
            return self._guarded(run, report, fetcher)
        return self._recorded("reconcile", trigger, run, fetcher, window, [report])

    def _fetcher(self) -> Fetcher:
        return Fetcher(
            self.connector,
            self.client,
            sleep=self.sleep,
            clock=self.clock,
            budget=self.budgets.for_connector(self.connector),
            stopping=self.stopping,
            on_wait=self._save_wait,
        )

    def _save_wait(self, state: dict[str, Any]) -> None:
        """Save the rate-limit state of a wait about to start, for ``syncd status``."""
        try:
            with self.store.session() as session:
                save_rate_limit(session, self.name, state, self._now())
        except StoreUnavailableError as exc:
            log.warning("%s: rate-limit wait not saved for status: %s", self.name, exc)

    def _default_since(self, now: datetime) -> datetime:
        settings = self.connector.provider
        since = now - settings.reconcile_window
        last_until = self._last_reconciled_until()
        if last_until is not None:
            since = min(since, last_until - settings.lookback)
        elif settings.start_from != "now":
            since = min(since, settings.start_from)  # type: ignore[type-var]
        if settings.start_from == "now":
            # "now" fetches no history from before the first start, on the
            # first reconcile and on every later one.
            since = max(since, self.origin(now))
        return since

    def _note_start_from_now(
        self, report: RunReport, since: datetime, now: datetime
    ) -> None:
        """Explain a default window that ``start_from = "now"`` cut short."""
        settings = self.connector.provider
        if settings.start_from != "now" or since <= now - settings.reconcile_window:
            return
        report.notes.append(
            f"the window starts at syncd's first run for {self.name} "
            f'({to_utc_iso(since)}) because start_from is "now"; pass --since '
            "to list older events"
        )

    def _default_until(self, now: datetime, since: datetime, trigger: str) -> datetime:
        """Return the end of the window when none was given.

        A scheduled reconcile of a provider with webhooks ends WEBHOOK_SETTLE
        before now. A webhook sent a moment ago may otherwise arrive after
        the listing logged its event, and count as missed. The next scheduled
        reconcile lists those seconds. A reconcile run by hand lists up to now.
        """
        if trigger != "schedule" or not self.connector.provider.webhooks_enabled:
            return now
        return max(since, now - WEBHOOK_SETTLE)

    def origin(self, now: datetime) -> datetime:
        """Return when syncd first ran for this provider, recording it if new."""
        with self.store.session() as session:
            state = load_cursor(session, self.name, ORIGIN_LISTING)
            if state.get("origin"):
                return parse_time(state["origin"])
            save_cursor(
                session, self.name, ORIGIN_LISTING, {"origin": to_utc_iso(now)}, now
            )
        return now

    def _last_reconciled_until(self) -> datetime | None:
        with self.store.session() as session:
            statement = (
                select(Run.window_until)
                .where(Run.provider == self.name, Run.kind == "reconcile")
                .where(Run.status == "ok")
                .order_by(Run.window_until.desc())  # type: ignore[union-attr]
                .limit(1)
            )
            return session.execute(statement).scalar_one_or_none()

    def _dry_run_listing(self, fetcher: Fetcher, listing: str, report: RunReport):
        from syncd.store import WriteResult

        request = self.connector.first_request(listing, report.window)
        seen: set[PageRequest] = set()
        while request is not None:
            check_not_seen(listing, request, seen)
            page = self.connector.parse_page(listing, request, fetcher.fetch(request))
            keys = [record.key for record in page.records]
            with self.store.session() as session:
                known = set(
                    session.execute(
                        select(Event.key).where(
                            Event.provider == self.name, Event.key.in_(keys)
                        )
                    ).scalars()
                )
            result = WriteResult(
                new=[r for r in page.records if r.key not in known],
                duplicates=[r for r in page.records if r.key in known],
            )
            report.add(result, page.records)
            request = page.next

    def _guarded(
        self, run: Callable[[], RunReport], failed: RunReport, fetcher: Fetcher
    ) -> RunReport:
        return self._run_with_status(run, lambda: failed, fetcher)[0]

    def _run_with_status(
        self,
        run: Callable[[], RunReport],
        failed: Callable[[], RunReport],
        fetcher: Fetcher,
    ) -> tuple[RunReport, str]:
        """Call ``run``; return its report and status: ok, failed or stopped.

        On an error the report that ``failed`` returns gets the error's
        message. It is the run's own report where the caller has it, so that
        the pages stored before the error are counted.
        """
        status = "failed"
        self._failed_on_store = False
        try:
            report = run()
        except (ProviderError, StoreUnavailableError) as exc:
            report = failed()
            report.error = str(exc)
            if isinstance(exc, StoppingError):
                status = "stopped"
            self._failed_on_store = isinstance(exc, StoreUnavailableError)
        else:
            if report.ok:
                status = "ok"
        report.requests = fetcher.requests
        return report, status

    def _recorded(
        self,
        kind: str,
        trigger: str,
        run: Callable[[], RunReport],
        fetcher: Fetcher,
        window: Window | None = None,
        partial: list[RunReport] | None = None,
    ) -> RunReport:
        """Run ``run`` between a 'running' and a final run record.

        ``partial`` receives the run's report as soon as ``run`` creates it,
        so that a run that fails or stops records what it stored before.
        """
        self._record_earlier_ends()
        started_at = self._now()
        record_id = self._open_run(kind, trigger, started_at, window)
        empty = RunReport(self.name, kind, kind, window or Window(None, started_at))
        partial = partial if partial is not None else []

        def failed() -> RunReport:
            return partial[-1] if partial else empty

        try:
            report, status = self._run_with_status(run, failed, fetcher)
        except KeyboardInterrupt as exc:
            stopped = failed()
            stopped.error = f"interrupted ({str(exc) or 'Ctrl-C'})"
            stopped.requests = fetcher.requests
            self._close_run(record_id, stopped, "stopped")
            raise
        if status == "ok":
            clear_passed_block(self.store, fetcher, self._now())
        self.metrics.rate_limit_waits.labels(self.name).inc(fetcher.rate_limit_waits)
        self.metrics.rate_limit_wait_seconds.labels(self.name).inc(
            fetcher.rate_limit_wait_seconds
        )
        self._close_run(record_id, report, status)
        self._log_and_count(report, status)
        return report

    def _open_run(
        self, kind: str, trigger: str, started_at: datetime, window: Window | None
    ) -> int | None:
        run = Run(
            provider=self.name,
            kind=kind,
            trigger=trigger,
            started_at=started_at,
            window_since=window.since if window else None,
            window_until=window.until if window else None,
        )
        try:
            with self.store.session() as session:
                session.add(run)
                session.flush()
                return run.id
        except StoreUnavailableError:
            # The run meets the same outage and reports it; see _log_outage.
            return None

    def _close_run(self, record_id: int | None, report: RunReport, status: str) -> None:
        if record_id is None:
            return
        finished_at = self._now()
        try:
            self._write_run_end(record_id, report, status, finished_at)
        except StoreUnavailableError as exc:
            log.error(
                "%s: cannot record the end of run %d: %s. It is recorded before "
                "the next run, once the store is back",
                self.name,
                record_id,
                exc,
            )
            # A one-shot `syncd reconcile` has no next run, and calls
            # record_pending_ends before it exits instead.
            self._unrecorded_ends.append((record_id, report, status, finished_at))

    def record_pending_ends(self, timeout: float) -> list[int]:
        """Retry recording the ends that met a store outage, for ``timeout`` seconds.

        For a process that runs no further runs. Returns the ids of the runs
        whose end is still unrecorded, which stay 'running' in the store.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._record_earlier_ends()
            remaining = deadline - time.monotonic()
            if not self._unrecorded_ends or remaining <= 0:
                return [record_id for record_id, *_ in self._unrecorded_ends]
            self.sleep(min(1.0, remaining))

    def _record_earlier_ends(self) -> None:
        """Record the ends of earlier runs that met a store outage, oldest first."""
        while self._unrecorded_ends:
            try:
                self._write_run_end(*self._unrecorded_ends[0])
            except StoreUnavailableError:
                return  # the next run meets the outage and logs it
            self._unrecorded_ends.pop(0)

    def _write_run_end(
        self, record_id: int, report: RunReport, status: str, finished_at: datetime
    ) -> None:
        with self.store.session() as session:
            run = session.get(Run, record_id)
            if run is None:
                return  # pruned by a later run's record
            if report.skipped:
                session.delete(run)
                return
            run.status = status
            run.finished_at = finished_at
            run.window_since = report.window.since
            run.window_until = report.window.until
            run.requests = report.requests
            run.listed, run.new, run.already = (
                report.listed,
                report.new,
                report.already,
            )
            run.by_type = json.dumps({k: asdict(v) for k, v in report.by_type.items()})
            run.error = report.error
            self._prune_runs(session, report.kind, record_id)

    def _prune_runs(self, session, kind: str, newest_id: int) -> None:
        session.execute(
            delete(Run).where(
                Run.provider == self.name,
                Run.kind == kind,
                Run.id <= newest_id - KEEP_RUNS,  # type: ignore[operator]
            )
        )

    def _log_failure(self, report: RunReport) -> None:
        """Log a failed run at ERROR, and the same failure again once an hour.

        A provider that returns 401 for every poll would otherwise add one
        ERROR line per poll_interval until its token is fixed.
        """
        now = self.clock()
        failure = (report.kind, report.error)
        repeats = self._repeats
        if repeats is not None and repeats.failure == failure:
            repeats.count += 1
            if now - repeats.logged_at < REPEAT_LOG_SECONDS:
                return
            log.error(
                "%s: %s run still failing: %s (%d failed runs since %s)",
                self.name,
                report.kind,
                report.error,
                repeats.count,
                to_utc_iso(datetime.fromtimestamp(repeats.since, UTC)),
            )
            repeats.logged_at = now
            return
        log.error("%s: %s run failed: %s", self.name, report.kind, report.error)
        self._repeats = _Repeats(failure, since=now, logged_at=now)

    def _log_outage(self, report: RunReport) -> bool:
        """Log a store outage once when it starts and once when it ends.

        Return True when ``report`` failed because of the outage, so that
        each failed run during a long outage adds no line of its own.
        """
        if self._failed_on_store:
            if self._store_down_since is None:
                self._store_down_since = self._now()
                log.warning(
                    "%s: %s run failed because the event store is unavailable: "
                    "%s. Runs fail until it is back, and the next one continues "
                    "from the committed cursor",
                    self.name,
                    report.kind,
                    report.error,
                )
            return True
        if self._store_down_since is not None:
            log.info(
                "%s: runs reach the event store again; it was unavailable since %s",
                self.name,
                to_utc_iso(self._store_down_since),
            )
            self._store_down_since = None
        return False

    def _log_and_count(self, report: RunReport, status: str) -> None:
        if report.skipped:
            log.debug("%s: poll skipped until the server's interval passes", self.name)
            return
        self.metrics.runs.labels(self.name, report.kind, status).inc()
        self.metrics.run_seconds.labels(self.name, report.kind).observe(report.seconds)
        for kind, counts in report.by_type.items():
            self.metrics.events_logged.labels(self.name, report.source).inc(counts.new)
            if self.connector.provider.webhooks_enabled and report.kind == "reconcile":
                self.metrics.missed_recovered.labels(self.name, kind).inc(counts.new)
        if status == "stopped":
            log.info("%s: %s run stopped: %s", self.name, report.kind, report.error)
            return
        if self._log_outage(report):
            return
        if not report.ok:
            self._log_failure(report)
            return
        self._repeats = None
        if self.connector.provider.webhooks_enabled and report.kind == "reconcile":
            for kind, counts in report.by_type.items():
                if counts.new:
                    log.warning(
                        "%s: reconcile recovered %d missed webhook(s) of type %s",
                        self.name,
                        counts.new,
                        kind,
                    )
        log.info(
            "%s: %s listed %d, new %d, already %d, window %s to %s, "
            "%d request(s), %.2fs",
            self.name,
            report.kind,
            report.listed,
            report.new,
            report.already,
            to_utc_iso(report.window.since) if report.window.since else "start",
            to_utc_iso(report.window.until) if report.window.until else "now",
            report.requests,
            report.seconds,
        )
