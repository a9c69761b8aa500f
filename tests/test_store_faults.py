"""Store faults under webhook intake: a locked SQLite file, dropped connections.

A webhook is answered 2xx only after its commit, so during an outage every
answer is 503 and nothing is half-stored; after it, intake recovers by itself
and the outage and the recovery are each logged once.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from syncd.store import Store
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
