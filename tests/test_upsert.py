"""Tests of the driver-SQL upsert of events, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

from connectors.base import EventRecord
from syncd.models import Event, SourceStats
from syncd.store import Store, record_events
from syncd.upsert import CHUNK_ROWS, sqlite_time

T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)


def make_record(number: int, resource: str | None = None) -> EventRecord:
    return EventRecord(
        key=f"evt_{number}",
        type="invoice.paid",
        occurred_at=T0 + timedelta(seconds=number, microseconds=number),
        payload=f'{{"id": "evt_{number}", "text": "Zoë \\"quoted\\""}}',
        resource=resource,
        version=str(number) if resource else None,
    )


def write(store: Store, source: str, records: list[EventRecord]):
    with store.session() as session:
        return record_events(session, "payments", source, records, T0)


def stored(store: Store) -> dict[str, Event]:
    with store.session() as session:
        return {e.key: e for e in session.execute(select(Event)).scalars()}


aware_times = st.datetimes(
    min_value=datetime(1000, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@given(aware_times)
def test_sqlite_time_matches_sqlalchemy(moment: datetime) -> None:
    """The text is the one SQLAlchemy's column type stores on SQLite."""
    dialect = sqlite.dialect()
    column_type = Event.__table__.c.occurred_at.type
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    assert sqlite_time(moment) == process(moment)


def test_sqlite_time_rejects_naive() -> None:
    """A datetime without an offset raises instead of being stored as UTC."""
    with pytest.raises(ValueError, match="naive"):
        sqlite_time(datetime(2024, 5, 1, 10, 0))


def test_batch_over_chunk_size_all_stored(store: Store) -> None:
    """A batch larger than one statement stores every row once."""
    count = 2 * CHUNK_ROWS + 7
    records = [make_record(n) for n in range(count)]
    result = write(store, "reconcile", records)
    assert len(result.new) == count
    assert len(set(result.new_offsets)) == count
    assert set(stored(store)) == {r.key for r in records}


def test_batch_over_chunk_size_counts_known_keys(store: Store) -> None:
    """Known keys spread over several statements are counted as duplicates."""
    known = [make_record(n) for n in range(0, 3 * CHUNK_ROWS, 3)]
    write(store, "webhook", known)
    everything = [make_record(n) for n in range(3 * CHUNK_ROWS)]
    result = write(store, "reconcile", everything)
    assert {r.key for r in result.duplicates} == {r.key for r in known}
    assert len(result.new) == len(everything) - len(known)
    rows = stored(store)
    assert all(rows[r.key].duplicates == 1 for r in known)
    assert all(rows[r.key].poll_seen_at == T0 for r in known)
    assert all(rows[r.key].webhook_seen_at == T0 for r in known)


def test_offsets_match_keys(store: Store) -> None:
    """Each new record is returned with the offset its row was stored at."""
    records = [make_record(n) for n in range(CHUNK_ROWS + 3)]
    result = write(store, "poll", records)
    rows = stored(store)
    for record, offset in zip(result.new, result.new_offsets, strict=True):
        assert rows[record.key].offset == offset


def test_columns_round_trip(store: Store) -> None:
    """Every column reads back as written, with and without a resource."""
    records = [make_record(1, resource="customer:cus_1"), make_record(2)]
    write(store, "webhook", records)
    rows = stored(store)
    for record in records:
        row = rows[record.key]
        assert row.type == record.type
        assert row.occurred_at == record.occurred_at
        assert row.payload == record.payload
        assert row.resource == record.resource
        assert row.version == record.version
        assert row.first_source == "webhook"
        assert row.first_seen_at == T0
        assert row.webhook_seen_at == T0
        assert row.poll_seen_at is None
        assert row.duplicates == 0


def test_arrivals_counted_per_batch(store: Store) -> None:
    """source_stats adds each batch's arrivals and duplicates."""
    write(store, "poll", [make_record(1), make_record(2)])
    write(store, "poll", [make_record(2), make_record(3), make_record(3)])
    with store.session() as session:
        stats = session.get_one(SourceStats, ("payments", "poll"))
    assert stats.received == 5
    assert stats.duplicates == 2
    assert stats.last_at == T0
