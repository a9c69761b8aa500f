"""Retention gaps, capped feeds and deletes (FC-09, FC-13, FC-14)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import respx
from sqlalchemy import select

from connectors.base import EventRecord, Page, PageRequest, Window
from connectors.stripe import StripeConnector
from syncd import config as config_module
from syncd.gaps import open_gaps
from syncd.models import Event
from syncd.queries import provider_status
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime
from syncd.store import save_cursor
from syncd.units import parse_time, to_utc_iso
from tests.e2e.support import T0, make_config


def logged_keys(store) -> set[str]:
    with store.session() as session:
        return set(session.execute(select(Event.key)).scalars())


def test_old_cursor_reports_retention_gap(
    database_url, simulator, harness_factory, clock
):
    """A 39-day-old cursor opens a gap shown in status and still polls (FC-13)."""
    config = make_config(database_url, simulator.base_url, webhooks=False)
    harness = harness_factory(config)
    old = datetime.fromtimestamp(T0, UTC) - timedelta(days=39)
    with harness.runtime.store.session() as session:
        save_cursor(
            session,
            "payments",
            "events",
            {"origin": to_utc_iso(old), "high_water": to_utc_iso(old)},
            datetime.fromtimestamp(T0, UTC),
        )
    recent = simulator.emit("invoice.paid", created=T0 - 60)

    report = harness.runner.poll()[0]

    assert report.ok
    assert recent["id"] in logged_keys(harness.runtime.store)
    gaps = provider_status(harness.runtime.store, "payments", "polling").open_gaps
    assert len(gaps) == 1
    assert gaps[0]["until"] == "2024-04-01T10:00:00.000000Z"
    assert "30-day retention" in gaps[0]["reason"]


def test_failed_listing_implies_no_delete(
    database_url, simulator, harness_factory, clock
):
    """A 5xx while listing leaves every logged entry in place (FC-09)."""
    config = make_config(
        database_url, simulator.base_url, webhooks=True, max_attempts=1
    )
    harness = harness_factory(config)
    simulator.emit("customer.created", created=T0 - 60, object_id="cus_9")
    assert harness.runner.reconcile().ok
    simulator.fail_next(1, status=502)

    report = harness.runner.reconcile()

    assert not report.ok
    assert len(logged_keys(harness.runtime.store)) == 1


def test_lost_delete_webhook_recovered(database_url, simulator, harness_factory, clock):
    """A customer.deleted whose webhook was lost is found by reconcile (FC-09)."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    simulator.emit("customer.created", created=T0 - 120, object_id="cus_9")
    harness.runner.reconcile()
    # Older than the minute a scheduled reconcile leaves to webhooks in flight.
    deleted = simulator.emit("customer.deleted", created=T0 - 90, object_id="cus_9")

    report = harness.runner.reconcile()

    assert deleted["id"] in logged_keys(harness.runtime.store)
    assert report.by_type["customer.deleted"].new == 1


class CappedFeedConnector(StripeConnector):
    """A feed of the newest three entries, with a full resource listing."""

    name = "capped-test"

    def listings(self) -> list[str]:
        return ["feed"]

    def reconcile_listings(self) -> list[str]:
        return ["resources"]

    def first_request(self, listing: str, window: Window) -> PageRequest:
        params = (("since", to_utc_iso(window.since)),) if window.since else ()
        return PageRequest(url=f"/{listing}", params=params)

    def parse_page(self, listing, request, response) -> Page:
        records = [
            EventRecord(
                key=item["id"],
                type="thing.updated",
                occurred_at=parse_time(item["at"]),
                payload=str(item),
            )
            for item in response.json()["items"]
        ]
        page = Page(records=records, next=None)
        since = dict(request.params).get("since")
        if listing == "feed" and records and since:
            oldest = min(r.occurred_at for r in records)
            if oldest > parse_time(since):
                page.gap_before = oldest
        return page


def _items(count: int, start: int) -> list[dict]:
    base = datetime.fromtimestamp(T0, UTC)
    return [
        {"id": f"thing_{n}", "at": to_utc_iso(base + timedelta(seconds=n))}
        for n in range(start, start + count)
    ]


@respx.mock
def test_capped_feed_gap_reconciled(database_url, clock):
    """A capped feed without overlap opens a gap that resource listings close."""
    config = config_module.parse(
        {
            "daemon": {"database": database_url},
            "providers": {
                "things": {
                    "connector": "stripe",
                    "api_base_url": "http://127.0.0.1:9",
                    "api_token": "t",
                    "start_from": "2024-05-01T09:00:00Z",
                }
            },
        }
    )
    runtime = Runtime.open(config, clock=clock)
    connector = CappedFeedConnector(config.providers["things"])
    everything = _items(10, 0)
    respx.get("http://127.0.0.1:9/feed").mock(
        return_value=httpx.Response(200, json={"items": everything[-3:]})
    )
    respx.get("http://127.0.0.1:9/resources").mock(
        return_value=httpx.Response(200, json={"items": everything})
    )
    with httpx.Client() as client:
        runner = ProviderRunner(
            runtime.store, connector, client, clock=clock, sleep=lambda _: None
        )
        report = runner.poll()[0]

    assert any("newest entries" in note for note in report.notes)
    assert logged_keys(runtime.store) == {item["id"] for item in everything}
    assert open_gaps(runtime.store, "things") == []
    runtime.close()
