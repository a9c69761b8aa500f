"""Run records whose end the store was down to write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.stripe import StripeConnector
from syncd.errors import StoreUnavailableError
from syncd.models import Run
from syncd.reconcile import ProviderRunner
from syncd.store import Store
from tests.e2e.support import T0, make_config

API = "http://127.0.0.1:9"
EMPTY_PAGE = {"object": "list", "data": [], "has_more": False}
# One event, and more after it: the next request continues after evt_1.
PAGE_WITH_MORE = {
    "object": "list",
    "data": [
        {
            "id": "evt_1",
            "object": "event",
            "type": "invoice.paid",
            "created": T0 - 60,
            "data": {"object": {"id": "in_1", "object": "invoice"}},
        }
    ],
    "has_more": True,
}


def runs(store: Store) -> list[Run]:
    with store.session() as session:
        return list(session.execute(select(Run).order_by(Run.id)).scalars())


def store_down(*args: object) -> None:
    raise StoreUnavailableError("connection refused (test outage)")


@pytest.fixture
def empty_api() -> Iterator[httpx.Client]:
    """A client of a provider API whose every listing is one empty page."""
    with httpx.Client() as client, respx.mock() as mock:
        mock.get(f"{API}/v1/events").mock(
            return_value=httpx.Response(200, json=EMPTY_PAGE)
        )
        yield client


def runner_for(store: Store, client: httpx.Client, **options: Any) -> ProviderRunner:
    provider = make_config(store.url, API, webhooks=False).providers["payments"]
    return ProviderRunner(store, StripeConnector(provider), client, **options)


def test_run_end_recorded_after_outage(
    store: Store, empty_api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's end that met an outage is written before the next run."""
    now = [float(T0)]
    runner = runner_for(store, empty_api, clock=lambda: now[0])
    write_end = runner._write_run_end

    monkeypatch.setattr(runner, "_write_run_end", store_down)
    (first,) = runner.poll()
    during = runs(store)

    monkeypatch.setattr(runner, "_write_run_end", write_end)
    now[0] += 60
    (second,) = runner.poll()
    after = runs(store)

    assert first.ok
    assert second.ok
    assert [run.status for run in during] == ["running"]
    assert [run.status for run in after] == ["ok", "ok"]
    assert after[0].finished_at is not None
    assert after[0].finished_at.timestamp() == T0
    assert after[1].finished_at is not None
    assert after[1].finished_at.timestamp() == T0 + 60


def test_run_end_kept_while_store_down(
    store: Store, empty_api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end still unwritable at the next run is kept for the run after it."""
    runner = runner_for(store, empty_api, clock=lambda: T0)
    write_end = runner._write_run_end

    monkeypatch.setattr(runner, "_write_run_end", store_down)
    runner.poll()
    runner.poll()
    during = runs(store)

    monkeypatch.setattr(runner, "_write_run_end", write_end)
    runner.poll()
    after = runs(store)

    assert [run.status for run in during] == ["running", "running"]
    assert [run.status for run in after] == ["ok", "ok", "ok"]


def test_interrupted_run_recorded_stopped(store: Store) -> None:
    """A run ended by Ctrl-C is recorded as stopped, not left running."""
    provider = make_config(store.url, API, webhooks=False).providers["payments"]

    def interrupt(request: httpx.Request) -> httpx.Response:
        raise KeyboardInterrupt

    # respx does not count a call whose side effect raises KeyboardInterrupt.
    with httpx.Client() as client, respx.mock(assert_all_called=False) as mock:
        mock.get(f"{API}/v1/events").mock(side_effect=interrupt)
        runner = ProviderRunner(
            store, StripeConnector(provider), client, clock=lambda: T0
        )
        with pytest.raises(KeyboardInterrupt):
            runner.poll()

    (run,) = runs(store)
    assert run.status == "stopped"
    assert run.finished_at is not None
    assert run.error == "interrupted (Ctrl-C)"


def test_pending_end_recorded_once_store_returns(
    store: Store, empty_api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record_pending_ends writes an end as soon as the store takes it."""
    sleeps: list[float] = []
    runner = runner_for(store, empty_api, clock=lambda: T0)
    write_end = runner._write_run_end

    def store_back(seconds: float) -> None:
        sleeps.append(seconds)
        monkeypatch.setattr(runner, "_write_run_end", write_end)

    monkeypatch.setattr(runner, "_write_run_end", store_down)
    runner.reconcile(trigger="command")
    runner.sleep = store_back
    left = runner.record_pending_ends(10.0)

    assert left == []
    assert len(sleeps) == 1
    assert [run.status for run in runs(store)] == ["ok"]


def test_pending_end_left_after_timeout(
    store: Store, empty_api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end the store never takes is returned after the timeout, still running."""
    runner = runner_for(store, empty_api, clock=lambda: T0, sleep=lambda _: None)

    monkeypatch.setattr(runner, "_write_run_end", store_down)
    runner.reconcile(trigger="command")
    left = runner.record_pending_ends(0.1)

    (run,) = runs(store)
    assert left == [run.id]
    assert run.status == "running"


@pytest.mark.parametrize("kind", ["poll", "reconcile"])
def test_failed_run_counts_pages_stored(store: Store, kind: str) -> None:
    """A run that fails after storing pages records what it stored."""
    provider = make_config(store.url, API, webhooks=False, max_attempts=1)
    with httpx.Client() as client, respx.mock() as mock:
        mock.get(f"{API}/v1/events").mock(
            side_effect=[httpx.Response(200, json=PAGE_WITH_MORE), httpx.Response(401)]
        )
        runner = ProviderRunner(
            store,
            StripeConnector(provider.providers["payments"]),
            client,
            clock=lambda: T0,
        )
        report = runner.poll()[0] if kind == "poll" else runner.reconcile()

    (run,) = runs(store)
    assert not report.ok
    assert run.status == "failed"
    assert run.listed == 1
    assert run.new == 1
    assert run.requests == 2


def test_dry_run_stops_on_looping_pages(store: Store) -> None:
    """A dry run ends on a listing whose next page is one it already read."""
    with httpx.Client() as client, respx.mock() as mock:
        route = mock.get(f"{API}/v1/events").mock(
            return_value=httpx.Response(200, json=PAGE_WITH_MORE)
        )
        runner = runner_for(store, client, clock=lambda: T0)
        report = runner.reconcile(dry_run=True, trigger="command")

    assert not report.ok
    assert "the provider's pagination loops" in (report.error or "")
    assert route.call_count == 2
