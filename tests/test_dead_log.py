"""Dead deliveries of a sink that stays down: one full line, then counts."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest

from connectors.base import EventRecord
from syncd.delivery import DeadDeliveryLog, DeliveryWorker, FailedAttemptLog
from syncd.metrics import Metrics
from syncd.outbox import RetryPolicy, SinkRoute
from syncd.sinks.base import Outcome, Sink
from syncd.store import Store, record_events
from tests.delivery_support import T0, Clock

WINDOW = timedelta(minutes=5)


class DownSink(Sink):
    """A sink whose every delivery fails."""

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        return Outcome.failed("connection refused")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def worker(store: Store, clock: Clock, metrics: Metrics) -> DeliveryWorker:
    """A worker whose deliveries end dead at their first failed attempt."""
    store.sink_routes = [SinkRoute("app")]
    return DeliveryWorker(
        store,
        DownSink("app", None),
        SinkRoute("app"),
        RetryPolicy(max_attempts=1),
        clock=clock,
        metrics=metrics,
        seed=3,
    )


def log_events(store: Store, keys: list[str]) -> None:
    records = [
        EventRecord(
            key=key,
            type="invoice.paid",
            occurred_at=T0,
            payload=json.dumps({"id": key}),
        )
        for key in keys
    ]
    with store.session() as session:
        record_events(session, "payments", "webhook", records, T0)


def drain(worker: DeliveryWorker) -> None:
    while worker.run_once():
        pass


def dead_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "syncd.delivery" and record.levelno == logging.ERROR
    ]


def dead_counted(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("syncd_sink_dead_total", {"sink": "app"})
    return value or 0.0


def test_first_dead_logged_in_full(store, worker, metrics, caplog):
    """The first dead delivery names its event and the fix; later ones are counted."""
    log_events(store, ["evt_1", "evt_2", "evt_3"])
    drain(worker)

    lines = dead_lines(caplog)
    assert len(lines) == 1
    assert "giving up on payments/evt_1" in lines[0]
    assert "connection refused" in lines[0]
    assert "syncd deliveries retry --dead --sink app" in lines[0]
    assert dead_counted(metrics) == 3


def test_count_logged_when_window_ends(store, worker, clock, caplog):
    """At the end of the window the other dead deliveries make one line."""
    log_events(store, ["evt_1", "evt_2", "evt_3"])
    drain(worker)
    clock.advance(WINDOW.total_seconds() - 1)
    worker.run_once()
    assert len(dead_lines(caplog)) == 1

    clock.advance(1)
    worker.run_once()

    lines = dead_lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith(
        "2 more deliveries to sink app ended dead in the last 5 minutes"
    )


def test_outage_logs_one_line_per_window(store, worker, clock, metrics, caplog):
    """While deliveries keep ending dead, each window adds one count line."""
    log_events(store, ["evt_1", "evt_2"])
    drain(worker)
    for window in range(3):
        clock.advance(60)
        log_events(store, [f"evt_w{window}_a", f"evt_w{window}_b"])
        drain(worker)
        clock.advance(WINDOW.total_seconds() - 60)
        worker.run_once()

    lines = dead_lines(caplog)
    assert len(lines) == 4
    assert lines[1].startswith("3 more deliveries to sink app")
    assert lines[2].startswith("2 more deliveries to sink app")
    assert lines[3].startswith("2 more deliveries to sink app")
    assert dead_counted(metrics) == 8


def test_quiet_window_resets(store, worker, clock, caplog):
    """After a window with no more dead deliveries, the next is logged in full."""
    log_events(store, ["evt_1"])
    drain(worker)
    clock.advance(WINDOW.total_seconds())
    worker.run_once()
    log_events(store, ["evt_2"])
    drain(worker)

    lines = dead_lines(caplog)
    assert len(lines) == 2
    assert "giving up on payments/evt_2" in lines[1]


def test_final_flush_logs_open_count(caplog):
    """On stop the count of an open window is logged with its real length."""
    dead_log = DeadDeliveryLog("app")
    with caplog.at_level(logging.ERROR, logger="syncd.delivery"):
        for offset in range(4):
            dead_log.dead(offset, f"payments/evt_{offset}", 1, "refused", T0)
        dead_log.flush(T0 + timedelta(seconds=30), final=True)

    lines = dead_lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith(
        "3 more deliveries to sink app ended dead in the last 30 seconds"
    )


def test_stopped_worker_logs_open_count(store, worker, caplog):
    """A worker that stops logs the count it has not logged yet."""
    log_events(store, ["evt_1", "evt_2"])
    drain(worker)
    worker.start()
    worker.stop()

    lines = dead_lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith("1 more delivery to sink app ended dead")


def test_failed_attempts_logged_as_count(caplog):
    """Failed attempts in one window give one WARNING, then one count line."""
    failed_log = FailedAttemptLog("app")
    retry_at = T0 + timedelta(minutes=1)
    with caplog.at_level(logging.WARNING, logger="syncd.delivery"):
        for offset in range(5):
            error = f"HTTP 503 from sink ({offset})"
            failed_log.failed(1, f"payments/evt_{offset}", error, retry_at, T0)
        failed_log.flush(T0 + WINDOW)

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 2
    assert "attempt 1 for payments/evt_0 failed" in lines[0]
    assert lines[1].startswith("sink app: 4 more failed attempts in the last 5 minutes")
    assert "HTTP 503 from sink (4)" in lines[1]
