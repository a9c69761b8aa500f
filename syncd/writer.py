"""Group commit for webhook intake.

Each webhook request hands its events to one writer thread and waits. The
thread takes every request waiting at that moment, stores them in one
transaction, commits, and only then resolves each request's future, so a
2xx is never sent before the commit and concurrent requests share one fsync.
Requests that wait in an event loop (:meth:`BatchWriter.write`) are woken
with one call into their loop per batch, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from connectors.base import EventRecord
from syncd.errors import StoreUnavailableError
from syncd.store import Store, WriteResult, record_events

log = logging.getLogger(__name__)


# The outcome of a queued write: its result, or the error that failed it.
Outcome = WriteResult | BaseException


@dataclass
class _Item:
    """One queued write, and the future that its waiter waits on.

    ``future`` serves :meth:`BatchWriter.submit` and ``waiter`` (an asyncio
    future) serves :meth:`BatchWriter.write`; one of them is set.
    """

    provider: str
    source: str
    records: Sequence[EventRecord]
    future: Future[WriteResult] | None = None
    waiter: asyncio.Future[WriteResult] | None = None


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

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit(
        self, provider: str, source: str, records: Sequence[EventRecord]
    ) -> Future[WriteResult]:
        """Queue records; the future resolves once they are committed."""
        future: Future[WriteResult] = Future()
        self._enqueue(_Item(provider, source, records, future=future))
        return future

    async def write(
        self, provider: str, source: str, records: Sequence[EventRecord]
    ) -> WriteResult:
        """Queue records and return their result once they are committed.

        Raises StoreUnavailableError when the batch could not be committed.
        """
        waiter: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(provider, source, records, waiter=waiter))
        return await waiter

    def _enqueue(self, item: _Item) -> None:
        self._queue.put(item)

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
            _settle(batch, [exc] * len(batch))
            return
        except Exception as exc:  # noqa: BLE001 - every waiting request must hear back
            log.exception("writing a batch of %d webhooks failed", len(batch))
            _settle(batch, [StoreUnavailableError(str(exc))] * len(batch))
            return

        self._report_recovery()
        if self.on_commit is not None:
            for item, result in zip(batch, results, strict=True):
                # The events are committed, so a failing hook must neither
                # withhold the 2xx nor end this thread.
                try:
                    self.on_commit(item.provider, item.source, result)
                except Exception:  # noqa: BLE001 - logged; the commit stands
                    log.exception("on_commit hook failed for %s", item.provider)
        _settle(batch, list(results))

    def _report_outage(self, exc: Exception) -> None:
        if not self._store_down:
            log.error("store unavailable, answering webhooks with 503: %s", exc)
        self._store_down = True

    def _report_recovery(self) -> None:
        if self._store_down:
            log.warning("store available again")
        self._store_down = False


def _settle(batch: list[_Item], outcomes: list[Outcome]) -> None:
    """Hand each item its outcome, with one call into each waiting event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, Outcome]]] = {}
    for item, outcome in zip(batch, outcomes, strict=True):
        if item.waiter is not None:
            by_loop.setdefault(item.waiter.get_loop(), []).append((item, outcome))
        elif item.future is not None and not item.future.cancelled():
            _set_outcome(item.future, outcome)
    for loop, pairs in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, pairs)
        except RuntimeError:
            # The loop is closed, so no request waits in it any more.
            log.debug("an event loop closed before %d writes were settled", len(pairs))


def _settle_waiters(pairs: list[tuple[_Item, Outcome]]) -> None:
    """Set the waiters' outcomes. Runs in the waiters' event loop."""
    for item, outcome in pairs:
        assert item.waiter is not None
        # A request cancelled while it waited (its client left) is skipped.
        if not item.waiter.done():
            _set_outcome(item.waiter, outcome)


def _set_outcome(
    future: Future[WriteResult] | asyncio.Future[WriteResult], outcome: Outcome
) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


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
