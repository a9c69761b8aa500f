"""Log lines of failing runs: a store outage and a failure that repeats."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx

from connectors.stripe import StripeConnector
from syncd.errors import StoreUnavailableError
from syncd.reconcile import ProviderRunner
from syncd.store import Store
from tests.e2e.support import T0, make_config

API = "http://127.0.0.1:9"
EMPTY_PAGE = {"object": "list", "data": [], "has_more": False}


class Outage:
    """A stand-in for a store's session that raises while ``down`` is set."""

    def __init__(self, store: Store) -> None:
        self.down = False
        self._session = store.session
        store.session = self.session  # type: ignore[method-assign]

    def session(self, *args, **kwargs):
        if self.down:
            raise StoreUnavailableError("connection refused (test outage)")
        return self._session(*args, **kwargs)


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "syncd.reconcile" and r.levelno == level
    ]


def test_run_outage_logged_once_each_way(store: Store, caplog):
    """Three failed polls give one WARNING; the next good poll one INFO."""
    caplog.set_level(logging.INFO)
    provider = make_config(store.url, API, webhooks=False).providers["payments"]
    outage = Outage(store)
    with httpx.Client() as client, respx.mock() as mock:
        mock.get(f"{API}/v1/events").mock(
            return_value=httpx.Response(200, json=EMPTY_PAGE)
        )
        runner = ProviderRunner(
            store, StripeConnector(provider), client, clock=lambda: T0
        )
        outage.down = True
        failed = [runner.poll()[0] for _ in range(3)]
        outage.down = False
        (recovered,) = runner.poll()

    assert [report.ok for report in failed] == [False, False, False]
    assert recovered.ok
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 1
    assert "event store is unavailable" in warnings[0]
    assert lines(caplog, logging.ERROR) == []
    infos = lines(caplog, logging.INFO)
    assert sum("reach the event store again" in line for line in infos) == 1


def test_repeated_failure_logged_hourly(store: Store, caplog):
    """The same 401 on every poll gives one ERROR, then one an hour with a count."""
    caplog.set_level(logging.INFO)
    provider = make_config(store.url, API, webhooks=False).providers["payments"]
    now = [float(T0)]
    with httpx.Client() as client, respx.mock() as mock:
        mock.get(f"{API}/v1/events").mock(
            return_value=httpx.Response(401, json={"error": {"message": "bad key"}})
        )
        runner = ProviderRunner(
            store, StripeConnector(provider), client, clock=lambda: now[0]
        )
        for _ in range(3):
            runner.poll()
            now[0] += 60
        first_hour = lines(caplog, logging.ERROR)
        now[0] += 3600
        runner.poll()

    errors = lines(caplog, logging.ERROR)
    assert len(first_hour) == 1
    assert "poll run failed" in first_hour[0]
    assert len(errors) == 2
    assert "poll run still failing" in errors[1]
    assert "(4 failed runs since 2024-05-01T10:00:00" in errors[1]
