"""Delivery workers: claim due outbox rows of one sink, deliver, record.

Each sink has its own workers, so a sink that keeps failing never slows
another sink or the intake. On stop a worker finishes the delivery in hand
and gives back the leases of rows it had claimed but not started.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from syncd.errors import StoreUnavailableError
from syncd.leases import release_dead_leases
from syncd.metrics import Metrics
from syncd.models import Delivery
from syncd.outbox import (
    LEASE_LOST,
    RetryPolicy,
    SinkRoute,
    claim,
    envelope,
    idempotency_key,
    load_for_delivery,
    newest_delivered_time,
    record_outcome,
    release,
    renew,
)
from syncd.sinks.base import Outcome, Sink
from syncd.store import Store

log = logging.getLogger(__name__)

BATCH = 10


class DeliveryWorker:
    """One thread delivering the due rows of one sink."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        route: SinkRoute,
        policy: RetryPolicy,
        *,
        ordered: bool = True,
        lease: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        idle_wait: float = 1.0,
        metrics: Metrics | None = None,
        seed: int | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.route = route
        self.policy = policy
        self.ordered = ordered
        self.lease = lease
        self.clock = clock
        self.idle_wait = idle_wait
        self.metrics = metrics
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = random.Random(seed)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_down = False

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"syncd-sink-{self.sink.name}", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Look for due rows now instead of after the idle wait."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the delivery in hand, release other leases, end the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.sink.close()

    def _run(self) -> None:
        self._release_dead_leases()
        while not self._stopping.is_set():
            try:
                handled = self.run_once()
            except StoreUnavailableError as exc:
                self._report_outage(exc)
                handled = 0
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any error
                # E.g. sqlalchemy.exc.TimeoutError when the connection pool is
                # exhausted, which is not a DBAPIError. Rows keep their leases
                # and are claimed again when those run out.
                self._report_outage(exc, unexpected=True)
                handled = 0
            if handled == 0:
                self._wake.wait(self.idle_wait)
                self._wake.clear()
        self._release_leases()

    def run_once(self) -> int:
        """Claim one batch of due rows and deliver them; return how many."""
        now = self.clock()
        with self.store.session() as session:
            ids = claim(
                session,
                self.sink.name,
                self.owner,
                now,
                lease=self.lease,
                limit=BATCH,
                ordered=self.ordered,
            )
        self._report_recovery()
        handled = 0
        for delivery_id in ids:
            if self._stopping.is_set():
                break
            self._deliver_one(delivery_id)
            handled += 1
        return handled

    def _deliver_one(self, delivery_id: int) -> None:
        with self.store.session() as session:
            if not renew(session, delivery_id, self.owner, self.clock(), self.lease):
                log.info(
                    "sink %s: delivery %d skipped: its lease ran out and passed "
                    "to another worker",
                    self.sink.name,
                    delivery_id,
                )
                return
            loaded = load_for_delivery(session, delivery_id)
            if loaded is None:
                return
            delivery, event = loaded
            newest = newest_delivered_time(session, self.sink.name, delivery.resource)
        superseded = newest is not None and newest > event.occurred_at
        body = envelope(event, delivery, superseded)
        key = idempotency_key(event.provider, event.key)
        now = self.clock()
        outcome = self._attempt(body, key, int(now.timestamp()))

        with self.store.session() as session:
            row = session.get(Delivery, delivery_id)
            if row is None:
                return
            status = record_outcome(
                session,
                row,
                outcome,
                self.policy,
                self.clock(),
                self._rng,
                owner=self.owner,
            )
            attempts, next_at = row.attempts, row.next_attempt_at
        if status == LEASE_LOST:
            log.warning(
                "sink %s: attempt for %s failed (%s) after its lease passed to "
                "another worker; that worker records the next outcome",
                self.sink.name,
                event.key,
                outcome.error,
            )
            return
        self._log_outcome(event.key, status, attempts, next_at, outcome)

    def _attempt(self, body: bytes, key: str, timestamp: int) -> Outcome:
        try:
            return self.sink.deliver(body, key, timestamp)
        except Exception as exc:  # noqa: BLE001 - a sink bug must not stop the worker
            log.exception("sink %s raised while delivering", self.sink.name)
            return Outcome.failed(f"sink raised {exc!r}")

    def _log_outcome(
        self,
        key: str,
        status: str,
        attempts: int,
        next_at: datetime,
        outcome: Outcome,
    ) -> None:
        if self.metrics is not None:
            result = "delivered" if outcome.delivered else "failed"
            self.metrics.sink_attempts.labels(self.sink.name, result).inc()
            if status == "dead":
                self.metrics.sink_dead.labels(self.sink.name).inc()
        if status == "dead":
            log.error(
                "sink %s: giving up on %s after %d attempt(s): %s; "
                "run 'syncd deliveries retry --dead' once the sink is fixed",
                self.sink.name,
                key,
                attempts,
                outcome.error,
            )
        elif not outcome.delivered:
            log.warning(
                "sink %s: attempt %d for %s failed (%s); next at %s",
                self.sink.name,
                attempts,
                key,
                outcome.error,
                next_at.isoformat(timespec="seconds"),
            )

    def _release_leases(self) -> None:
        try:
            with self.store.session() as session:
                release(session, self.owner)
        except StoreUnavailableError as exc:
            log.warning(
                "sink %s: leases not released (%s); they expire", self.sink.name, exc
            )

    def _release_dead_leases(self) -> None:
        try:
            release_dead_leases(self.store, self.sink.name)
        except Exception as exc:  # noqa: BLE001 - e.g. a pool timeout; leases expire
            # Any error here must not end the thread before its first claim.
            log.warning(
                "sink %s: leases of stopped processes not released (%s); they expire",
                self.sink.name,
                exc,
            )

    def _report_outage(self, exc: Exception, *, unexpected: bool = False) -> None:
        """Log the first failed round of an outage; later ones stay quiet."""
        if self._store_down:
            return
        if unexpected:
            log.exception(
                "sink %s: delivery round failed, retrying every %gs",
                self.sink.name,
                self.idle_wait,
            )
        else:
            log.error("sink %s: store unavailable, pausing: %s", self.sink.name, exc)
        self._store_down = True

    def _report_recovery(self) -> None:
        if self._store_down:
            log.warning("sink %s: recovered, delivering again", self.sink.name)
        self._store_down = False
