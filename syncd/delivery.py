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

from sqlalchemy.orm import Session

from syncd.claims import claim
from syncd.errors import StoreUnavailableError
from syncd.leases import release_dead_leases
from syncd.metrics import Metrics
from syncd.models import Delivery, Event
from syncd.outbox import (
    LEASE_LOST,
    Recorded,
    RetryPolicy,
    SinkRoute,
    envelope,
    idempotency_key,
    load_many,
    newest_delivered_times,
    read_attempts,
    record_attempt,
    release,
    release_rows,
    renew,
)
from syncd.sinks.base import Outcome, Sink
from syncd.store import Store

log = logging.getLogger(__name__)

# The maximum number of rows one round claims. The ordered claim reads every
# pending row of the sink, so a round spreads that cost over up to this many
# deliveries.
# NOTE: a round to a sink that times out on every row takes up to BATCH
# timeouts. Rows not yet started may outlive their lease meanwhile, and
# another worker may then take them, which the renewal before each delivery
# detects.
BATCH = 100
# After a sink's first dead delivery or failed attempt is logged, later ones
# are counted over this window and logged as one line. A sink that is down
# for days then does not log a line per event or per attempt.
DEAD_LOG_WINDOW = timedelta(minutes=5)


class WindowedLog:
    """A log line for the first of a kind of event, then one count per window.

    Later events are counted until ``window`` has passed since the full line,
    and then logged as one line with the count. While they continue, each
    count line starts the next window. A window with no more events ends
    without a line, and the next event is logged in full again. The caller
    calls :meth:`flush` now and then, so that a count is logged when its
    window ends, and once with ``final`` on stop.
    """

    def __init__(self, sink: str, level: int, window: timedelta) -> None:
        self.sink = sink
        self.level = level
        self.window = window
        self._window_start: datetime | None = None
        self._more = 0

    def note(self, now: datetime, message: str, *args: object) -> None:
        """Log ``message`` if no window is open at ``now``; else count it."""
        self.flush(now)
        if self._window_start is not None:
            self._more += 1
            return
        self._window_start = now
        log.log(self.level, message, *args)

    def flush(self, now: datetime, *, final: bool = False) -> None:
        """Log the count of an ended window; with ``final``, of the open one too."""
        if self._window_start is None:
            return
        elapsed = now - self._window_start
        if elapsed < self.window and not final:
            return
        if self._more:
            log.log(self.level, self.count_line(self._more, _span(elapsed)))
        self._window_start = None if final or not self._more else now
        self._more = 0

    def count_line(self, count: int, span: str) -> str:
        """Return the line that reports ``count`` events over ``span``."""
        raise NotImplementedError


class DeadDeliveryLog(WindowedLog):
    """The dead deliveries of one sink, logged at ERROR without a line each."""

    def __init__(self, sink: str, window: timedelta = DEAD_LOG_WINDOW) -> None:
        super().__init__(sink, logging.ERROR, window)

    def dead(
        self,
        delivery_id: int,
        event: str,
        attempts: int,
        error: str | None,
        now: datetime,
    ) -> None:
        """Log or count one delivery that ended dead at ``now``."""
        self.note(
            now,
            "sink %s: giving up on %s (delivery %d) after %d attempt(s): %s; run "
            "'syncd deliveries retry --dead --sink %s' once the sink is fixed. "
            "More dead deliveries of this sink in the next %s are logged as a count",
            self.sink,
            event,
            delivery_id,
            attempts,
            error,
            self.sink,
            _span(self.window),
        )

    def count_line(self, count: int, span: str) -> str:
        noun = "delivery" if count == 1 else "deliveries"
        return (
            f"{count} more {noun} to sink {self.sink} ended dead in the last "
            f"{span}; run 'syncd deliveries retry --dead --sink {self.sink}' "
            "once the sink is fixed"
        )


class FailedAttemptLog(WindowedLog):
    """The failed attempts of one sink, logged at WARNING without a line each."""

    def __init__(self, sink: str, window: timedelta = DEAD_LOG_WINDOW) -> None:
        super().__init__(sink, logging.WARNING, window)
        self.last_error: str | None = None

    def failed(
        self,
        attempts: int,
        event: str,
        error: str | None,
        next_at: datetime,
        now: datetime,
    ) -> None:
        """Log or count one failed attempt that is retried at ``next_at``."""
        self.last_error = error
        self.note(
            now,
            "sink %s: attempt %d for %s failed (%s); next at %s. More failed "
            "attempts of this sink in the next %s are logged as a count",
            self.sink,
            attempts,
            event,
            error,
            next_at.isoformat(timespec="seconds"),
            _span(self.window),
        )

    def count_line(self, count: int, span: str) -> str:
        noun = "attempt" if count == 1 else "attempts"
        return (
            f"sink {self.sink}: {count} more failed {noun} in the last {span}, "
            f"the last with: {self.last_error}; each is retried with backoff "
            "(syncd deliveries list --status pending shows them)"
        )


def _span(delta: timedelta) -> str:
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{round(seconds / 60)} minutes"


class _Claimed:
    """The rows of one round, in delivery order, and the chains still going.

    With per-resource ordering, a chain is the claimed rows of one resource.
    ``newest`` maps a resource to the provider time of its newest event
    already delivered to the sink, and follows this round's deliveries.
    """

    def __init__(
        self,
        items: list[tuple[Delivery, Event]],
        newest: dict[str, datetime],
        ordered: bool,
    ) -> None:
        self._items = items
        self._newest = newest
        self._ordered = ordered
        self._ended: set[str] = set()
        self._position = 0

    @classmethod
    def load(
        cls, session: Session, sink: str, ids: list[int], ordered: bool
    ) -> _Claimed:
        items = load_many(session, ids)
        resources = (delivery.resource for delivery, _ in items)
        return cls(items, newest_delivered_times(session, sink, resources), ordered)

    def next(self) -> tuple[Delivery, Event] | None:
        """Return the next row whose chain has not ended, or None at the end."""
        while self._position < len(self._items):
            item = self._items[self._position]
            self._position += 1
            if item[0].resource not in self._ended:
                return item
        return None

    def end_chain(self, delivery: Delivery) -> list[int]:
        """End the chain of ``delivery``; return the ids of its rows not started.

        Without per-resource ordering, and for rows without a resource,
        nothing follows a row, so nothing ends.
        """
        resource = delivery.resource
        if not self._ordered or resource is None:
            return []
        self._ended.add(resource)
        ahead = self._items[self._position :]
        return [later.id for later, _ in ahead if later.resource == resource]

    def superseded(self, delivery: Delivery, event: Event) -> bool:
        """Return whether a newer event of the resource was already delivered."""
        if delivery.resource is None:
            return False
        newest = self._newest.get(delivery.resource)
        return newest is not None and newest > event.occurred_at

    def delivered(self, delivery: Delivery, event: Event) -> None:
        """Note a delivery, so that later rows of the round see it as delivered."""
        if delivery.resource is None:
            return
        newest = self._newest.get(delivery.resource)
        if newest is None or event.occurred_at > newest:
            self._newest[delivery.resource] = event.occurred_at


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
        batch: int = BATCH,
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
        self.batch = batch
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
        # True from a claim until its round ends; still True at the next
        # round when a failure (a store outage) cut the last one short.
        self._holds_leases = False
        self._dead_log = DeadDeliveryLog(sink.name)
        self._failed_log = FailedAttemptLog(sink.name)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"syncd-sink-{self.sink.name}", daemon=True
        )
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
                # exhausted, which is not a DBAPIError. The next round gives
                # back the leases of rows this one did not finish.
                self._report_outage(exc, unexpected=True)
                handled = 0
            if handled == 0:
                self._wake.wait(self.idle_wait)
                self._wake.clear()
        self._release_leases()
        self._dead_log.flush(self.clock(), final=True)
        self._failed_log.flush(self.clock(), final=True)

    def run_once(self) -> int:
        """Claim one batch of due rows and deliver them; return the attempts made.

        Also log the count of dead deliveries once its window has ended.
        """
        now = self.clock()
        self._dead_log.flush(now)
        self._failed_log.flush(now)
        with self.store.session() as session:
            if self._holds_leases:
                # Rows the failed round claimed but did not finish would stay
                # leased for the whole lease (5 minutes or more) and, with
                # per-resource ordering, hold back their resources' later
                # events. This worker has nothing in hand now, so it gives
                # them all back and claims again.
                release(session, self.owner)
            ids = claim(
                session,
                self.sink.name,
                self.owner,
                now,
                lease=self.lease,
                limit=self.batch,
                ordered=self.ordered,
                chain=self.batch,
                share=self.ordered,
            )
        self._holds_leases = bool(ids)
        self._report_recovery()
        handled = self._deliver_claimed(ids) if ids else 0
        self._holds_leases = False
        return handled

    def _deliver_claimed(self, ids: list[int]) -> int:
        """Deliver claimed rows in order, one transaction per attempt.

        That transaction records the outcome and renews the lease of the
        next row, so each row's lease is checked just before its delivery.
        A batch claimed long ago may contain rows whose lease ran out and
        passed to another worker, and those must not be delivered a second
        time. With per-resource ordering, a failure or a lost lease ends the
        resource's chain, and the leases of its later rows are given back.
        """
        with self.store.session() as session:
            claimed = _Claimed.load(session, self.sink.name, ids, self.ordered)
            current = self._renew_next(session, claimed)
        handled = 0
        while current is not None and not self._stopping.is_set():
            delivery, event = current
            outcome = self._attempt_one(delivery, event, claimed)
            with self.store.session() as session:
                recorded = self._record(session, delivery.id, outcome)
                if recorded is None or recorded.status != "delivered":
                    release_rows(session, self.owner, claimed.end_chain(delivery))
                current = self._renew_next(session, claimed)
            handled += 1
            if recorded is not None:
                self._report(delivery.id, event, outcome, recorded)
        return handled

    def _renew_next(
        self, session: Session, claimed: _Claimed
    ) -> tuple[Delivery, Event] | None:
        """Renew the lease of the next claimed row; return it, or None at the end.

        A row whose lease passed to another worker is skipped, and so is the
        rest of its chain.
        """
        while (item := claimed.next()) is not None:
            delivery = item[0]
            if renew(session, delivery.id, self.owner, self.clock(), self.lease):
                return item
            log.info(
                "sink %s: delivery %d skipped: its lease ran out and passed "
                "to another worker",
                self.sink.name,
                delivery.id,
            )
            release_rows(session, self.owner, claimed.end_chain(delivery))
        return None

    def _attempt_one(
        self, delivery: Delivery, event: Event, claimed: _Claimed
    ) -> Outcome:
        body = envelope(event, delivery, claimed.superseded(delivery, event))
        key = idempotency_key(event.provider, event.key)
        outcome = self._attempt(body, key, int(self.clock().timestamp()))
        if outcome.delivered:
            claimed.delivered(delivery, event)
        return outcome

    def _attempt(self, body: bytes, key: str, timestamp: int) -> Outcome:
        try:
            return self.sink.deliver(body, key, timestamp)
        except Exception as exc:  # noqa: BLE001 - a sink bug must not stop the worker
            log.exception("sink %s raised while delivering", self.sink.name)
            return Outcome.failed(f"sink raised {exc!r}")

    def _record(
        self, session: Session, delivery_id: int, outcome: Outcome
    ) -> Recorded | None:
        current = read_attempts(session, delivery_id)
        if current is None:
            return None
        return record_attempt(
            session,
            current,
            outcome,
            self.policy,
            self.clock(),
            self._rng,
            owner=self.owner,
        )

    def _report(
        self, delivery_id: int, event: Event, outcome: Outcome, recorded: Recorded
    ) -> None:
        if recorded.status == LEASE_LOST:
            log.warning(
                "sink %s: attempt for %s failed (%s) after its lease passed to "
                "another worker; that worker records the next outcome",
                self.sink.name,
                event.key,
                outcome.error,
            )
            return
        if self.metrics is not None:
            result = "delivered" if outcome.delivered else "failed"
            self.metrics.sink_attempts.labels(self.sink.name, result).inc()
            if recorded.status == "dead":
                self.metrics.sink_dead.labels(self.sink.name).inc()
        if recorded.status == "dead":
            self._dead_log.dead(
                delivery_id,
                f"{event.provider}/{event.key}",
                recorded.attempts,
                outcome.error,
                self.clock(),
            )
        elif recorded.next_attempt_at is not None:
            self._failed_log.failed(
                recorded.attempts,
                f"{event.provider}/{event.key}",
                outcome.error,
                recorded.next_attempt_at,
                self.clock(),
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
