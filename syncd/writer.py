"""Group commit for webhook intake.

Each webhook request hands its events to one writer thread and waits. The
thread takes every request waiting at that moment, stores them in one
transaction, commits, and only then resolves each request's future, so a
2xx is never sent before the commit and concurrent requests share one fsync.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from connectors.base import EventRecord
from syncd.errors import StoreUnavailableError
from syncd.store import Store, WriteResult, record_events

log = logging.getLogger(__name__)


@dataclass
class _Item:
    provider: str
    source: str
    records: Sequence[EventRecord]
    future: Future[WriteResult] = field(default_factory=Future)


class BatchWriter:
    """A thread that commits queued writes in batches of up to ``max_batch``."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 256,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_commit: Callable[[str, str, WriteResult], None] | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.clock = clock
        self.on_commit = on_commit
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="syncd-writer")
        self._store_down = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit(
        self, provider: str, source: str, records: Sequence[EventRecord]
    ) -> Future[WriteResult]:
        """Queue records; the future resolves once they are committed."""
        item = _Item(provider, source, records)
        self._queue.put(item)
        return item.future

    def _run(self) -> None:
        while True:
            batch, stopping = self._take_batch()
            if batch:
                self._commit(batch)
            if stopping:
                return

    def _take_batch(self) -> tuple[list[_Item], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _commit(self, batch: list[_Item]) -> None:
        seen_at = self.clock()
        try:
            with self.store.session() as session:
                results = _record_batch(session, batch, seen_at)
        except StoreUnavailableError as exc:
            self._report_outage(exc)
            for item in batch:
                item.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear back
            log.exception("writing a batch of %d webhooks failed", len(batch))
            for item in batch:
                item.future.set_exception(StoreUnavailableError(str(exc)))
            return

        self._report_recovery()
        for item, result in zip(batch, results, strict=True):
            if self.on_commit is not None:
                # The events are committed, so a failing hook must neither
                # withhold the 2xx nor end this thread.
                try:
                    self.on_commit(item.provider, item.source, result)
                except Exception:  # noqa: BLE001 - logged; the commit stands
                    log.exception("on_commit hook failed for %s", item.provider)
            item.future.set_result(result)

    def _report_outage(self, exc: Exception) -> None:
        if not self._store_down:
            log.error("store unavailable, answering webhooks with 503: %s", exc)
        self._store_down = True

    def _report_recovery(self) -> None:
        if self._store_down:
            log.warning("store available again")
        self._store_down = False


def _record_batch(
    session: Session, batch: list[_Item], seen_at: datetime
) -> list[WriteResult]:
    """Store a batch with one record_events call per provider and source.

    One call per group sends one multi-row INSERT instead of one statement
    per webhook. Its result is split back into one WriteResult per item. When
    two items carry the same key, the first gets the event as ``new`` and the
    second as a duplicate, as separate calls would return.
    """
    groups: dict[tuple[str, str], list[_Item]] = {}
    for item in batch:
        groups.setdefault((item.provider, item.source), []).append(item)
    results: dict[int, WriteResult] = {}
    for (provider, source), items in groups.items():
        records = [record for item in items for record in item.records]
        combined = record_events(session, provider, source, records, seen_at)
        offsets = {
            id(record): offset
            for record, offset in zip(combined.new, combined.new_offsets, strict=True)
        }
        for item in items:
            results[id(item)] = _split_result(item.records, offsets)
    return [results[id(item)] for item in batch]


def _split_result(
    records: Sequence[EventRecord], new_offsets: dict[int, int]
) -> WriteResult:
    """Return one item's share of a combined result, taking its new offsets."""
    result = WriteResult()
    for record in records:
        offset = new_offsets.pop(id(record), None)
        if offset is None:
            result.duplicates.append(record)
        else:
            result.new.append(record)
            result.new_offsets.append(offset)
    return result
