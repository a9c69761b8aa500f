"""A poll or reconcile that syncd's stop ends: recorded as stopped, not failed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.stripe import StripeConnector
from syncd import config
from syncd.daemon import Daemon
from syncd.errors import StoppingError
from syncd.metrics import Metrics
from syncd.models import Run
from syncd.queries import provider_status
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime
from syncd.store import Store
from tests.e2e.support import T0, make_config

API = "http://127.0.0.1:9"
EVENTS_URL = f"{API}/v1/events"


def settings(database_url: str) -> config.Config:
    return make_config(database_url, API, webhooks=False, max_attempts=3)


def stop_now(seconds: float) -> None:
    raise StoppingError("syncd is stopping; the next start continues from the cursor")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def stopping_runner_for(
    store: Store, client: httpx.Client, metrics: Metrics, **options: Any
) -> ProviderRunner:
    """Return a runner whose waits between requests find syncd stopping."""
    provider = settings(store.url).providers["payments"]
    return ProviderRunner(
        store,
        StripeConnector(provider),
        client,
        metrics=metrics,
        clock=lambda: T0,
        sleep=stop_now,
        **options,
    )


@pytest.fixture
def stopping_runner(store: Store, metrics: Metrics) -> Iterator[ProviderRunner]:
    """A runner whose first wait between requests finds syncd stopping."""
    with httpx.Client() as client:
        yield stopping_runner_for(store, client, metrics)


def run_statuses(store: Store) -> list[tuple[str, str]]:
    with store.session() as session:
        rows = session.execute(select(Run.kind, Run.status).order_by(Run.id))
        return [(kind, status) for kind, status in rows]


def runs_counted(metrics: Metrics, kind: str, outcome: str) -> float:
    labels = {"provider": "payments", "kind": kind, "outcome": outcome}
    value = metrics.registry.get_sample_value("syncd_runs_total", labels)
    return value or 0.0


def errors_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("kind", ["poll", "reconcile"])
def test_stop_ends_run_as_stopped(store, stopping_runner, metrics, caplog, kind):
    """A run ended by the stop is recorded, counted and logged as stopped."""
    caplog.set_level(logging.INFO)
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(return_value=httpx.Response(503))
        if kind == "poll":
            (report,) = stopping_runner.poll()
        else:
            report = stopping_runner.reconcile()

    assert "syncd is stopping" in (report.error or "")
    assert run_statuses(store) == [(kind, "stopped")]
    assert runs_counted(metrics, kind, "stopped") == 1
    assert runs_counted(metrics, kind, "failed") == 0
    assert errors_of(caplog) == []
    stopped = f"payments: {kind} run stopped: syncd is stopping"
    assert any(stopped in r.getMessage() for r in caplog.records)


def test_stopped_run_in_status(store, stopping_runner):
    """``syncd status`` shows the last poll as stopped."""
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(return_value=httpx.Response(503))
        stopping_runner.poll()

    status = provider_status(store, "payments", "polling")
    assert status.last_poll is not None
    assert status.last_poll["status"] == "stopped"


def test_failure_still_logged_as_error(store, stopping_runner, metrics, caplog):
    """A run that fails on its own is still recorded and logged as failed."""
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(return_value=httpx.Response(401))
        (report,) = stopping_runner.poll()

    assert not report.ok
    assert run_statuses(store) == [("poll", "failed")]
    assert runs_counted(metrics, "poll", "failed") == 1
    assert runs_counted(metrics, "poll", "stopped") == 0
    assert any("poll run failed" in message for message in errors_of(caplog))


def test_daemon_stop_ends_poll(store, caplog):
    """A poll that starts once the daemon stops ends as stopped, with no request."""
    caplog.set_level(logging.INFO)
    daemon = Daemon(Runtime.open(settings(store.url), clock=lambda: T0))
    try:
        daemon._stop_runs.set()
        with respx.mock(assert_all_called=False) as mock:
            route = mock.get(EVENTS_URL).mock(return_value=httpx.Response(503))
            (report,) = daemon.runners["payments"].poll()
    finally:
        daemon.client.close()
        daemon.runtime.close()

    assert "syncd is stopping" in (report.error or "")
    assert route.call_count == 0
    assert run_statuses(store) == [("poll", "stopped")]
    assert errors_of(caplog) == []


def event(number: int) -> dict:
    return {
        "id": f"evt_{number:03d}",
        "object": "event",
        "type": "invoice.paid",
        "created": T0 - 60 - number,
        "data": {"object": {"id": f"in_{number}", "object": "invoice"}},
    }


@pytest.mark.parametrize("kind", ["poll", "reconcile"])
def test_stop_between_pages_ends_listing(store, metrics, kind):
    """A stop during a listing ends it after the pages already requested.

    The run record counts the pages that were stored before the stop.
    """
    stop = threading.Event()
    requested: list[str] = []

    def pages(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("starting_after")
        number = 0 if after is None else int(after.removeprefix("evt_")) + 1
        requested.append(f"evt_{number:03d}")
        if number == 1:
            stop.set()  # syncd's stop arrives while page 2 is being fetched
        body = {"object": "list", "data": [event(number)], "has_more": number < 9}
        return httpx.Response(200, json=body)

    with httpx.Client() as client, respx.mock() as mock:
        mock.get(EVENTS_URL).mock(side_effect=pages)
        runner = stopping_runner_for(store, client, metrics, stopping=stop.is_set)
        if kind == "poll":
            (report,) = runner.poll()
        else:
            report = runner.reconcile(trigger="command")

    with store.session() as session:
        (run,) = session.execute(select(Run)).scalars()
    assert report.error == StoppingError.MESSAGE
    assert requested == ["evt_000", "evt_001"]
    assert run.status == "stopped"
    assert run.listed == 2
    assert run.new == 2
    assert run.requests == 2
