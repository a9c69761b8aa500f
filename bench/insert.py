"""The dedup+insert stage of reconcile against raw executemany of the same rows.

Both sides start from records already parsed, so only storing is timed.
syncd stores them as ``run_listing`` does: one ``record_events`` call and one
transaction per page of 100. The baseline inserts the same rows into the same
table with the driver's ``executemany``, 1,000 rows per transaction, and does
no deduplication, counting or outbox work.

``python -m bench.insert DATABASE_URL COUNT [BATCH]`` times syncd's side on
its own, for a profiler, into an empty database, and prints events per
second.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from bench.backfill import make_config
from bench.provider import MAX_LIMIT, event_json
from connectors.base import EventRecord
from connectors.stripe import StripeConnector
from syncd.store import Store, record_events
from syncd.upsert import COLUMNS

PROVIDER = "payments"
BASELINE_BATCH = 1000


def make_records(count: int, newest: int) -> list[EventRecord]:
    config = make_config("sqlite:///unused.db", "http://127.0.0.1:9")
    settings = config.providers[PROVIDER]
    connector = StripeConnector(settings)
    records = []
    for index in range(count):
        text = event_json(index, newest)
        records.append(connector.event_record(json.loads(text), text))
    return records


def time_syncd(
    url: str, records: Sequence[EventRecord], batch: int = MAX_LIMIT
) -> float:
    store = Store(url)
    seen_at = datetime.now(UTC)
    started = time.perf_counter()
    for first in range(0, len(records), batch):
        with store.session() as session:
            page = records[first : first + batch]
            record_events(session, PROVIDER, "reconcile", page, seen_at)
    seconds = time.perf_counter() - started
    store.dispose()
    return seconds


def baseline_rows(records: Sequence[EventRecord], sqlite_text: bool) -> list[tuple]:
    """Return the rows that syncd stores, as the driver takes them."""
    now = datetime.now(UTC)
    rows = []
    for r in records:
        occurred, seen = r.occurred_at, now
        if sqlite_text:  # SQLAlchemy stores SQLite datetimes as naive UTC text
            occurred = str(occurred.replace(tzinfo=None))
            seen = str(seen.replace(tzinfo=None))
        rows.append(
            (
                PROVIDER,
                r.key,
                r.type,
                occurred,
                seen,
                "reconcile",
                None,
                seen,
                0,
                r.resource,
                r.version,
                r.payload,
            )
        )
    return rows


def time_sqlite_baseline(path: str, records: Sequence[EventRecord]) -> float:
    Store(f"sqlite:///{path}").dispose()  # the same schema and indexes
    rows = baseline_rows(records, sqlite_text=True)
    marks = ",".join("?" * len(COLUMNS))
    sql = f"INSERT INTO events ({','.join(COLUMNS)}) VALUES ({marks})"
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    started = time.perf_counter()
    for first in range(0, len(rows), BASELINE_BATCH):
        connection.execute("BEGIN")
        connection.executemany(sql, rows[first : first + BASELINE_BATCH])
        connection.execute("COMMIT")
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def time_postgres_baseline(url: str, records: Sequence[EventRecord]) -> float:
    Store(url).dispose()
    rows = baseline_rows(records, sqlite_text=False)
    marks = ",".join(["%s"] * len(COLUMNS))
    columns = ",".join(f'"{name}"' for name in COLUMNS)
    sql = f"INSERT INTO events ({columns}) VALUES ({marks})"
    with psycopg.connect(url) as connection:
        started = time.perf_counter()
        for first in range(0, len(rows), BASELINE_BATCH):
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(sql, rows[first : first + BASELINE_BATCH])
        return time.perf_counter() - started


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else MAX_LIMIT
    records = make_records(count, int(time.time()))
    seconds = time_syncd(url, records, batch)
    print(f"{count / seconds:,.0f} events/s, {batch} per transaction")


if __name__ == "__main__":
    main()
