"""The group-commit writer as event-loop code awaits it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import syncd.writer
from connectors.base import EventRecord
from syncd.errors import StoreUnavailableError
from syncd.store import Store
from syncd.writer import BatchWriter

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
WAIT = 10.0  # seconds a test waits for another thread before it fails


def record(key: str) -> EventRecord:
    return EventRecord(key=key, type="invoice.paid", occurred_at=T0, payload="{}")


@pytest.fixture
def writer(store: Store) -> Iterator[BatchWriter]:
    started = BatchWriter(store, clock=lambda: T0)
    started.start()
    yield started
    started.stop()


def test_write_returns_committed_result(writer: BatchWriter) -> None:
    first = asyncio.run(writer.write("payments", "webhook", [record("evt_1")]))
    again = asyncio.run(writer.write("payments", "webhook", [record("evt_1")]))
    assert [r.key for r in first.new] == ["evt_1"]
    assert [r.key for r in again.duplicates] == ["evt_1"]


def test_batch_writes_get_own_results(store: Store) -> None:
    """Writes queued together, from one loop, each get their own result."""
    writer = BatchWriter(store, clock=lambda: T0)

    async def scenario() -> list[Any]:
        tasks = [
            asyncio.create_task(writer.write("payments", "webhook", [record(key)]))
            for key in ("evt_1", "evt_2", "evt_1")
        ]
        await asyncio.sleep(0)  # every task queues its write
        writer.start()
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(scenario())
    finally:
        writer.stop()
    assert [[r.key for r in result.new] for result in results] == [
        ["evt_1"],
        ["evt_2"],
        [],
    ]
    assert [r.key for r in results[2].duplicates] == ["evt_1"]


def test_writes_from_two_loops(writer: BatchWriter) -> None:
    """Requests waiting in two event loops (two threads) both get results."""
    results: dict[str, Any] = {}

    def worker(key: str) -> None:
        results[key] = asyncio.run(writer.write("payments", "webhook", [record(key)]))

    threads = [threading.Thread(target=worker, args=(k,)) for k in ("evt_1", "evt_2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(results) == ["evt_1", "evt_2"]
    assert all(len(result.new) == 1 for result in results.values())


def test_cancelled_write_leaves_batch_answered(store: Store) -> None:
    """A request that stops waiting (its client left) spoils nothing for others."""
    writer = BatchWriter(store, clock=lambda: T0)

    async def scenario() -> Any:
        left = asyncio.create_task(writer.write("payments", "webhook", [record("a")]))
        stays = asyncio.create_task(writer.write("payments", "webhook", [record("b")]))
        await asyncio.sleep(0)  # both writes are queued for one batch
        left.cancel()
        writer.start()
        first = await asyncio.wait_for(stays, WAIT)
        later = await asyncio.wait_for(
            writer.write("payments", "webhook", [record("c")]), WAIT
        )
        return first, later

    try:
        first, later = asyncio.run(scenario())
        assert writer.is_alive()
    finally:
        writer.stop()
    assert [r.key for r in first.new] == ["b"]
    assert [r.key for r in later.new] == ["c"]


def test_failed_batch_raises_store_unavailable(
    writer: BatchWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise StoreUnavailableError("database error: disk I/O error")

    monkeypatch.setattr(syncd.writer, "record_events", fail)
    with pytest.raises(StoreUnavailableError, match="disk I/O error"):
        asyncio.run(writer.write("payments", "webhook", [record("evt_1")]))
