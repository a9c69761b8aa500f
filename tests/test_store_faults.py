"""Store faults: a locked SQLite file, dropped connections, failed sessions.

A webhook is answered 2xx only after its commit, so during an outage every
answer is 503 and nothing is half-stored; after it, intake recovers by itself
and the outage and the recovery are each logged once. A delivery worker
whose round fails part way claims its unfinished rows again after the
outage, and the metrics refresh logs an outage once, not on every run.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from connectors.base import EventRecord
from syncd.delivery import DeliveryWorker
from syncd.errors import StoreUnavailableError
from syncd.gauges import refresh_gauges
from syncd.metrics import Metrics
from syncd.outbox import RetryPolicy, SinkRoute
from syncd.sinks.base import Outcome, Sink
from syncd.store import Store, record_events
from tests.test_intake import (
    T0,
    FakeClock,
    event_body,
    open_intake,
    post,
    read_log,
)


def _count(caplog: pytest.LogCaptureFixture, fragment: str) -> int:
    return sum(fragment in record.getMessage() for record in caplog.records)


def test_sqlite_locked_answers_503(tmp_path: Path, caplog) -> None:
    """While another process holds the write lock, webhooks get 503, then 200."""
    path = tmp_path / "locked.db"
    store = Store(f"sqlite:///{path}")
    store.engine.dispose()
    with store.engine.connect() as connection:
        connection.execute(text("PRAGMA busy_timeout=100"))
    locker = sqlite3.connect(path, isolation_level=None)
    clock = FakeClock(T0 + 10)

    with caplog.at_level(logging.WARNING), open_intake(store, clock) as intake:
        locker.execute("BEGIN EXCLUSIVE")
        during = [post(intake.client, event_body(f"evt_{n}")) for n in range(2)]
        locker.execute("ROLLBACK")
        after = post(intake.client, event_body("evt_after"))

    locker.close()
    assert [r.status_code for r in during] == [503, 503]
    assert after.status_code == 200
    assert [row.key for row in read_log(store.url)] == ["evt_after"]
    assert _count(caplog, "store unavailable") == 1
    assert _count(caplog, "store available again") == 1
    store.dispose()


def test_dropped_connections_recover(store: Store, database_url: str) -> None:
    """Connections the server drops are replaced; no webhook gets a 2xx unstored."""
    if not database_url.startswith("postgresql"):
        pytest.skip("dropping server connections needs PostgreSQL")
    clock = FakeClock(T0 + 10)
    with open_intake(store, clock) as intake:
        assert post(intake.client, event_body("evt_before")).status_code == 200
        admin = Store(database_url, create=False)
        with admin.engine.begin() as connection:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = ''"
                )
            )
        admin.dispose()
        answers = [post(intake.client, event_body(f"evt_{n}")) for n in range(3)]

    stored = {row.key for row in read_log(store.url)}
    for number, answer in enumerate(answers):
        assert answer.status_code in (200, 503)
        if answer.status_code == 200:
            assert f"evt_{number}" in stored
    assert answers[-1].status_code == 200


class _RecordingSink(Sink):
    """A sink that accepts every envelope and keeps the event keys in order."""

    def __init__(self) -> None:
        super().__init__("archive", None)
        self.keys: list[str] = []

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        self.keys.append(json.loads(body)["key"])
        return Outcome.ok()


class _FailingSessions:
    """Wraps a store so that its sessions number ``fail_at`` onward fail."""

    def __init__(self, store: Store, fail_at: int) -> None:
        self.store = store
        self.fail_at = fail_at
        self.opened = 0

    @contextmanager
    def session(self) -> Iterator[Session]:
        self.opened += 1
        if self.opened >= self.fail_at:
            raise StoreUnavailableError("database error: connection refused")
        with self.store.session() as session:
            yield session


def test_outage_mid_round_keeps_no_lease(store: Store) -> None:
    """Rows claimed in a round that meets an outage are claimed again after it."""
    store.sink_routes = [SinkRoute("archive")]
    records = [
        EventRecord(
            key=f"evt_{n}",
            type="customer.updated",
            occurred_at=datetime(2024, 5, 1, 10, n, tzinfo=UTC),
            payload=json.dumps({"id": f"evt_{n}"}),
            resource="cus_1",
        )
        for n in range(3)
    ]
    with store.session() as session:
        record_events(session, "payments", "webhook", records, datetime.now(UTC))
    sink = _RecordingSink()
    failing = _FailingSessions(store, fail_at=2)
    worker = DeliveryWorker(failing, sink, SinkRoute("archive"), RetryPolicy())

    with pytest.raises(StoreUnavailableError):
        worker.run_once()
    failing.fail_at = 1_000_000
    while worker.run_once():
        pass

    assert sink.keys == ["evt_0", "evt_1", "evt_2"]


def test_gauges_log_outage_once(store: Store, caplog) -> None:
    """Failed metric refreshes log one line per outage, and one on recovery."""
    failing = _FailingSessions(store, fail_at=1)
    metrics = Metrics()
    now = datetime.now(UTC)

    with caplog.at_level(logging.INFO, logger="syncd.gauges"):
        for _ in range(3):
            refresh_gauges(failing, metrics, ["archive"], now)
        failing.fail_at = 1_000_000
        refresh_gauges(failing, metrics, ["archive"], now)
        refresh_gauges(failing, metrics, ["archive"], now)
        failing.fail_at = 0
        refresh_gauges(failing, metrics, ["archive"], now)

    assert _count(caplog, "metrics not refreshed") == 2
    assert _count(caplog, "metrics refreshed again") == 1
