"""Webhooks with losses and repeats, then a reconcile, against the simulated Stripe."""

from __future__ import annotations

import socket
from collections import Counter

from sqlalchemy import select

from syncd.daemon import Daemon
from syncd.models import Event
from syncd.runtime import Runtime
from syncd.store import record_events
from syncd.units import parse_time
from tests.e2e.support import T0, make_config


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def logged(store) -> list[Event]:
    with store.session() as session:
        return list(session.execute(select(Event)).scalars())


def test_lossy_webhooks_then_reconcile(database_url, simulator, harness_factory, clock):
    """30% dropped and 20% repeated webhooks: after reconcile the log is the truth."""
    sock = _free_socket()
    config = make_config(database_url, simulator.base_url, webhooks=True)
    config.daemon.listen = f"127.0.0.1:{sock.getsockname()[1]}"
    daemon = Daemon(Runtime.open(config, clock=clock), sock=sock)
    thread = daemon.start_in_thread()
    try:
        events = simulator.emit_many(200, same_second_groups=10)
        stats = simulator.deliver(
            f"http://{config.daemon.listen}/webhooks/payments",
            events,
            drop_rate=0.3,
            repeat_rate=0.2,
            reorder=True,
        )
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
    assert stats.failed == 0
    assert stats.dropped > 0
    assert stats.repeated > 0

    harness = harness_factory(config)
    report = harness.runner.reconcile(trigger="command")

    assert report.ok
    assert report.new == stats.dropped
    entries = logged(harness.runtime.store)
    keys = Counter(entry.key for entry in entries)
    assert set(keys) == set(simulator.truth())
    assert max(keys.values()) == 1
    recovered = {e.key for e in entries if e.first_source == "reconcile"}
    assert recovered == set(stats.dropped_ids)


def test_reconcile_records_both_streams(
    database_url, simulator, harness_factory, clock
):
    """An event seen by webhook and reconcile keeps both first-seen times."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    event = simulator.emit("invoice.paid", created=T0 - 60)
    body = simulator.webhook_body(event)
    connector = harness.runtime.connectors["payments"]
    headers = {"stripe-signature": simulator.sign(body)}
    connector.verify_webhook(headers, body, clock())
    with harness.runtime.store.session() as session:
        record_events(
            session,
            "payments",
            "webhook",
            connector.parse_webhook(headers, body),
            parse_time("2024-05-01T09:59:30Z"),
        )
    report = harness.runner.reconcile(trigger="command")

    assert report.already == 1
    entry = logged(harness.runtime.store)[0]
    assert entry.first_source == "webhook"
    assert entry.webhook_seen_at is not None
    assert entry.poll_seen_at is not None
    assert entry.duplicates == 1


def test_scheduled_reconcile_leaves_last_minute(
    database_url, simulator, harness_factory, clock
):
    """A webhook still in flight at a scheduled reconcile is not counted as missed."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    in_flight = simulator.emit("invoice.paid", created=int(clock()) - 10)

    first = harness.runner.reconcile()
    body = simulator.webhook_body(in_flight)
    connector = harness.runtime.connectors["payments"]
    with harness.runtime.store.session() as session:
        record_events(
            session,
            "payments",
            "webhook",
            connector.parse_webhook({}, body),
            parse_time("2024-05-01T10:00:05Z"),
        )
    clock.advance(15 * 60)
    second = harness.runner.reconcile()

    assert first.ok
    assert first.listed == 0
    assert second.ok
    assert second.already == 1
    assert second.new == 0
    (entry,) = logged(harness.runtime.store)
    assert entry.first_source == "webhook"


def test_command_reconcile_lists_to_now(
    database_url, simulator, harness_factory, clock
):
    """A reconcile run by hand lists events up to this moment."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    simulator.emit("invoice.paid", created=int(clock()) - 10)

    report = harness.runner.reconcile(trigger="command")

    assert report.ok
    assert report.new == 1


def test_reconcile_dry_run_stores_nothing(
    database_url, simulator, harness_factory, clock
):
    """A dry run reports what it would recover and leaves the log empty."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    simulator.emit_many(5)

    report = harness.runner.reconcile(dry_run=True, trigger="command")

    assert report.ok
    assert report.new == 5
    assert logged(harness.runtime.store) == []


def test_reconcile_extends_window_after_downtime(
    database_url, simulator, harness_factory, clock
):
    """After a long outage, reconcile reaches back to where the last one ended."""
    config = make_config(
        database_url, simulator.base_url, webhooks=True, reconcile_window="1h"
    )
    harness = harness_factory(config)
    assert harness.runner.reconcile().ok
    clock.advance(5 * 3600)
    missed = simulator.emit("invoice.paid", created=int(clock()) - 4 * 3600)

    report = harness.runner.reconcile()

    assert report.ok
    assert missed["id"] in {e.key for e in logged(harness.runtime.store)}


def test_reconcile_reports_retention_gap(
    database_url, simulator, harness_factory, clock
):
    """A window older than Stripe's 30-day retention is cut and the gap noted."""
    config = make_config(database_url, simulator.base_url, webhooks=True)
    harness = harness_factory(config)
    report = harness.runner.reconcile(
        since=parse_time("2024-03-23T10:00:00Z"), trigger="command"
    )

    assert report.ok
    assert any("retention" in note for note in report.notes)
    assert report.window.since == parse_time("2024-04-01T10:00:00Z")
