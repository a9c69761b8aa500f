"""Tests of the log's write path and cursors, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from connectors.base import EventRecord
from syncd.errors import ConfigError, StoreUnavailableError
from syncd.models import Event, SourceStats
from syncd.store import Store, WriteResult, load_cursor, record_events, save_cursor

PROVIDER = "payments"
T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[1]

# Records keys 0..COUNT-1 of one provider, one transaction per key, after the
# parent process writes a line to its standard input. Prints how many of the
# keys it stored as new.
RACE_WORKER = """
import sys
from datetime import UTC, datetime

from connectors.base import EventRecord
from syncd.store import Store, record_events

url, count = sys.argv[1], int(sys.argv[2])
now = datetime(2024, 5, 1, tzinfo=UTC)
store = Store(url, create=False)
print("ready", flush=True)
sys.stdin.readline()
new = 0
for number in range(count):
    record = EventRecord(key=f"evt_{number}", type="invoice.paid",
                         occurred_at=now, payload="{}")
    with store.session() as session:
        new += len(record_events(session, "payments", "poll", [record], now).new)
store.dispose()
print(new, flush=True)
"""


def make_record(
    key: str, payload: str | None = None, occurred_at: datetime = T0
) -> EventRecord:
    if payload is None:
        payload = json.dumps({"id": key})
    return EventRecord(
        key=key, type="invoice.paid", occurred_at=occurred_at, payload=payload
    )


def write(
    store: Store,
    source: str,
    records: list[EventRecord],
    seen_at: datetime = T0,
    provider: str = PROVIDER,
) -> WriteResult:
    with store.session() as session:
        return record_events(session, provider, source, records, seen_at)


def stored_event(store: Store, key: str, provider: str = PROVIDER) -> Event:
    with store.session() as session:
        statement = select(Event).where(Event.provider == provider, Event.key == key)
        return session.execute(statement).scalar_one()


def count_events(store: Store) -> int:
    with store.session() as session:
        return session.execute(select(func.count()).select_from(Event)).scalar_one()


def source_stats(store: Store, source: str) -> SourceStats:
    with store.session() as session:
        return session.get_one(SourceStats, (PROVIDER, source))


def race(stores: list[Store], count: int) -> tuple[list[int], list[BaseException]]:
    """Record the same ``count`` keys from one thread per store, started together."""
    barrier = threading.Barrier(len(stores))
    new_counts = [0] * len(stores)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for number in range(count):
                result = write(stores[index], "poll", [make_record(f"evt_{number}")])
                new_counts[index] += len(result.new)
        except Exception as exc:  # noqa: BLE001 - the test asserts there are none
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return new_counts, errors


# Inserting and counting duplicates


def test_record_new_events(store: Store) -> None:
    """New keys are all stored and returned as new, with no duplicates."""
    result = write(store, "webhook", [make_record(k) for k in ("a", "b", "c")])

    assert [r.key for r in result.new] == ["a", "b", "c"]
    assert result.duplicates == []
    assert count_events(store) == 3


def test_record_offsets_increase(store: Store) -> None:
    """Offsets of one batch increase in input order and match the stored rows."""
    result = write(store, "webhook", [make_record(k) for k in ("c", "a", "b")])

    assert result.new_offsets == sorted(result.new_offsets)
    assert len(set(result.new_offsets)) == 3
    stored = [stored_event(store, key).offset for key in ("c", "a", "b")]
    assert result.new_offsets == stored


def test_record_offsets_grow_across_batches(store: Store) -> None:
    """A later batch gets offsets above every offset of an earlier one."""
    first = write(store, "poll", [make_record("a"), make_record("b")])
    second = write(store, "poll", [make_record("c"), make_record("d")])

    assert min(second.new_offsets) > max(first.new_offsets)


def test_record_repeat_is_duplicate(store: Store) -> None:
    """The same key again is counted in the duplicates column, not stored twice."""
    write(store, "webhook", [make_record("evt_1")])
    result = write(store, "webhook", [make_record("evt_1")])

    assert result.new == []
    assert result.new_offsets == []
    assert [r.key for r in result.duplicates] == ["evt_1"]
    assert count_events(store) == 1
    assert stored_event(store, "evt_1").duplicates == 1


def test_record_repeats_accumulate(store: Store) -> None:
    """Each further arrival of a key adds one to its duplicates column."""
    for _ in range(4):
        write(store, "poll", [make_record("evt_1")])

    assert stored_event(store, "evt_1").duplicates == 3


def test_record_keeps_first_payload(store: Store) -> None:
    """A duplicate with a different payload leaves the stored payload as it was."""
    write(store, "webhook", [make_record("evt_1", payload='{"v": 1}')])
    write(store, "poll", [make_record("evt_1", payload='{"v": 2}')])

    assert stored_event(store, "evt_1").payload == '{"v": 1}'


@pytest.mark.parametrize("position", [0, 1, 2])
def test_record_mixed_batch(store: Store, position: int) -> None:
    """In a batch of new and known keys, each new key gets its own stored offset."""
    write(store, "webhook", [make_record("known")])
    keys = ["new_1", "new_2"]
    keys.insert(position, "known")

    result = write(store, "poll", [make_record(key) for key in keys])

    assert [r.key for r in result.new] == ["new_1", "new_2"]
    assert [r.key for r in result.duplicates] == ["known"]
    stored = [stored_event(store, key).offset for key in ("new_1", "new_2")]
    assert result.new_offsets == stored
    assert stored_event(store, "known").duplicates == 1
    assert stored_event(store, "new_1").duplicates == 0
    assert stored_event(store, "new_2").duplicates == 0


def test_record_batch_repeat(store: Store) -> None:
    """A key twice in one batch is stored once and counted as one duplicate."""
    records = [make_record("a"), make_record("a"), make_record("b")]

    result = write(store, "webhook", records)

    assert [r.key for r in result.new] == ["a", "b"]
    assert [r.key for r in result.duplicates] == ["a"]
    assert len(result.new_offsets) == 2
    assert count_events(store) == 2
    assert stored_event(store, "a").duplicates == 1
    assert stored_event(store, "b").duplicates == 0


def test_record_batch_repeat_of_known_key(store: Store) -> None:
    """A known key twice in one batch adds two to its duplicates column."""
    write(store, "webhook", [make_record("a")])

    result = write(store, "poll", [make_record("a"), make_record("a")])

    assert result.new == []
    assert len(result.duplicates) == 2
    assert stored_event(store, "a").duplicates == 2


def test_record_key_per_provider(store: Store) -> None:
    """One key under two providers is two entries."""
    write(store, "webhook", [make_record("evt_1")], provider="payments")
    result = write(store, "webhook", [make_record("evt_1")], provider="shop")

    assert len(result.new) == 1
    assert count_events(store) == 2


def test_record_empty_batch(store: Store) -> None:
    """An empty batch stores nothing and returns an empty result."""
    result = write(store, "poll", [])

    assert result.new == []
    assert result.duplicates == []
    assert count_events(store) == 0


# First-seen times and first source


def test_seen_times_webhook_then_poll(store: Store) -> None:
    """Each stream's seen time is its first arrival and is not overwritten later."""
    times = [T0 + timedelta(minutes=m) for m in range(4)]
    write(store, "webhook", [make_record("evt_1")], seen_at=times[0])
    write(store, "webhook", [make_record("evt_1")], seen_at=times[1])
    write(store, "poll", [make_record("evt_1")], seen_at=times[2])
    write(store, "poll", [make_record("evt_1")], seen_at=times[3])

    event = stored_event(store, "evt_1")
    assert event.webhook_seen_at == times[0]
    assert event.poll_seen_at == times[2]
    assert event.first_seen_at == times[0]
    assert event.first_source == "webhook"
    assert event.duplicates == 3


def test_seen_times_poll_first(store: Store) -> None:
    """A poll arrival leaves webhook_seen_at empty until a webhook arrives."""
    write(store, "poll", [make_record("evt_1")], seen_at=T0)

    assert stored_event(store, "evt_1").webhook_seen_at is None

    later = T0 + timedelta(minutes=5)
    write(store, "webhook", [make_record("evt_1")], seen_at=later)

    event = stored_event(store, "evt_1")
    assert event.webhook_seen_at == later
    assert event.poll_seen_at == T0
    assert event.first_seen_at == T0
    assert event.first_source == "poll"


def test_seen_times_reconcile_counts_as_poll(store: Store) -> None:
    """A reconcile arrival fills poll_seen_at and is kept as the first source."""
    write(store, "reconcile", [make_record("evt_1")], seen_at=T0)
    write(store, "webhook", [make_record("evt_1")], seen_at=T0 + timedelta(hours=1))

    event = stored_event(store, "evt_1")
    assert event.first_source == "reconcile"
    assert event.poll_seen_at == T0
    assert event.webhook_seen_at == T0 + timedelta(hours=1)


# Concurrent writers


def test_concurrent_threads_one_row(store: Store) -> None:
    """Two threads on one engine recording the same keys store each key once."""
    count = 40

    new_counts, errors = race([store, store], count)

    assert errors == []
    assert sum(new_counts) == count
    assert count_events(store) == count
    with store.session() as session:
        duplicates = session.execute(select(func.sum(Event.duplicates))).scalar_one()
    assert duplicates == count


def test_concurrent_engines_one_row(store: Store) -> None:
    """Two engines on one database recording the same keys store each key once."""
    count = 40
    other = Store(store.url, create=False)
    try:
        new_counts, errors = race([store, other], count)
    finally:
        other.dispose()

    assert errors == []
    assert sum(new_counts) == count
    assert count_events(store) == count


def test_concurrent_processes_one_row(store: Store) -> None:
    """Two processes recording the same keys at once store each key once."""
    count = 60
    command = [sys.executable, "-c", RACE_WORKER, store.url, str(count)]
    processes = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    assert sum(int(stdout) for stdout, _ in outputs) == count
    assert count_events(store) == count


# Stored values


def test_payload_stored_byte_exact(store: Store) -> None:
    """Payload text comes back unchanged: non-ASCII, big integers and spacing."""
    payload = (
        '{"name": "Zoë",  "id": 820982911946154508, '
        '"big": 1180591620717411303424, "nested" :[1,2.50, "€"]}'
    )
    assert str(2**70) in payload

    write(store, "webhook", [make_record("evt_1", payload=payload)])

    assert stored_event(store, "evt_1").payload == payload


def test_occurred_at_keeps_microseconds(store: Store) -> None:
    """occurred_at is read back as aware UTC with its microseconds."""
    local = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=timezone(timedelta(hours=2)))

    write(store, "webhook", [make_record("evt_1", occurred_at=local)])

    occurred = stored_event(store, "evt_1").occurred_at
    assert occurred.utcoffset() == timedelta(0)
    assert occurred.microsecond == 654321
    assert occurred == datetime(2024, 5, 1, 10, 0, 0, 654321, tzinfo=UTC)


def test_seen_at_is_aware_utc(store: Store) -> None:
    """first_seen_at and the stream's seen time come back as aware UTC."""
    seen = datetime(2024, 5, 1, 5, 30, 0, 1, tzinfo=timezone(timedelta(hours=-4)))

    write(store, "poll", [make_record("evt_1")], seen_at=seen)

    event = stored_event(store, "evt_1")
    assert event.first_seen_at.utcoffset() == timedelta(0)
    assert event.first_seen_at == seen
    assert event.poll_seen_at == seen


# Cursors and transactions


def test_cursor_missing_is_empty(store: Store) -> None:
    """A listing without a saved cursor loads as an empty dict."""
    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == {}


def test_cursor_round_trip(store: Store) -> None:
    """A cursor saved with a page's events loads back in a later transaction."""
    state = {"high_water": "2024-05-01T10:00:00.123456Z", "seen": ["evt_1"]}
    with store.session() as session:
        record_events(session, PROVIDER, "poll", [make_record("evt_1")], T0)
        save_cursor(session, PROVIDER, "events", state, T0)
        assert load_cursor(session, PROVIDER, "events") == state

    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == state
    assert count_events(store) == 1


def test_cursor_overwrite(store: Store) -> None:
    """Saving a cursor again replaces the earlier state."""
    with store.session() as session:
        save_cursor(session, PROVIDER, "events", {"page": 1}, T0)
    with store.session() as session:
        save_cursor(session, PROVIDER, "events", {"page": 2}, T0)

    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == {"page": 2}


def test_cursor_per_listing(store: Store) -> None:
    """Cursors of two listings of one provider are kept apart."""
    with store.session() as session:
        save_cursor(session, PROVIDER, "events", {"page": 1}, T0)
        save_cursor(session, PROVIDER, "orders", {"page": 7}, T0)

    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == {"page": 1}
        assert load_cursor(session, PROVIDER, "orders") == {"page": 7}


def test_rollback_discards_events_and_cursor(store: Store) -> None:
    """An exception inside a session leaves neither the events nor the cursor."""
    failure = pytest.raises(RuntimeError, match="page failed")
    with failure, store.session() as session:
        record_events(session, PROVIDER, "poll", [make_record("evt_1")], T0)
        save_cursor(session, PROVIDER, "events", {"page": 2}, T0)
        raise RuntimeError("page failed")

    assert count_events(store) == 0
    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == {}
        assert session.get(SourceStats, (PROVIDER, "poll")) is None


def test_rollback_keeps_earlier_cursor(store: Store) -> None:
    """A rolled-back page leaves the cursor of the previous page in place."""
    with store.session() as session:
        record_events(session, PROVIDER, "poll", [make_record("evt_1")], T0)
        save_cursor(session, PROVIDER, "events", {"page": 1}, T0)

    with pytest.raises(RuntimeError), store.session() as session:
        record_events(session, PROVIDER, "poll", [make_record("evt_2")], T0)
        save_cursor(session, PROVIDER, "events", {"page": 2}, T0)
        raise RuntimeError("page failed")

    assert count_events(store) == 1
    with store.session() as session:
        assert load_cursor(session, PROVIDER, "events") == {"page": 1}


# Arrival counts


def test_source_stats_counts(store: Store) -> None:
    """SourceStats counts arrivals and duplicates for each source separately."""
    write(store, "webhook", [make_record("a"), make_record("b"), make_record("a")])
    write(store, "poll", [make_record("a"), make_record("c")])
    write(store, "poll", [make_record("c"), make_record("d")])

    webhook = source_stats(store, "webhook")
    poll = source_stats(store, "poll")
    assert webhook.received == 3
    assert webhook.duplicates == 1
    assert poll.received == 4
    assert poll.duplicates == 2


def test_source_stats_last_at(store: Store) -> None:
    """SourceStats.last_at is the seen time of the source's latest batch."""
    later = T0 + timedelta(minutes=3)
    write(store, "webhook", [make_record("a")], seen_at=T0)
    write(store, "webhook", [make_record("b")], seen_at=later)

    assert source_stats(store, "webhook").last_at == later


# Unavailable databases


def test_unreachable_postgres_raises() -> None:
    """A PostgreSQL server that refuses connections raises StoreUnavailableError."""
    url = "postgresql://postgres:hunter2@127.0.0.1:1/test"

    with pytest.raises(StoreUnavailableError) as caught:
        Store(url)

    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "port 1" in message
    assert "hunter2" not in message


def test_unreachable_postgres_session_raises() -> None:
    """A session on an unreachable server raises StoreUnavailableError."""
    store = Store("postgresql://postgres@127.0.0.1:1/test", create=False)
    try:
        with pytest.raises(StoreUnavailableError, match="connection"):
            store.ping()
    finally:
        store.dispose()


def test_sqlite_missing_directory_raises(tmp_path: Path) -> None:
    """An SQLite path in a missing directory is a configuration error naming it."""
    missing = tmp_path / "missing"

    with pytest.raises(ConfigError) as caught:
        Store(f"sqlite:///{missing / 'syncd.db'}")

    message = str(caught.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert not missing.exists()
