"""Delivery workers on chains: stops at failures, lost leases, two workers."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from syncd.delivery import DeliveryWorker
from syncd.errors import StoreUnavailableError
from syncd.models import Delivery
from syncd.outbox import RetryPolicy, SinkRoute, load_many
from syncd.sinks.base import Outcome, Sink
from syncd.store import Store
from tests.delivery_support import Clock, drain, log_events, rows


class RecordingSink(Sink):
    """Accepts envelopes, except those of ``failing`` keys, and keeps them in order.

    ``spans`` keeps the start and end of each delivery by key, for checks
    that two deliveries of one resource never overlap. ``on_deliver`` runs
    inside each delivery, before it ends.
    """

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        super().__init__("app", None)
        self.failing = set(failing)
        self.bodies: list[dict] = []
        self.spans: dict[str, list[tuple[float, float]]] = {}
        self.on_deliver: Callable[[dict], None] | None = None
        self._lock = threading.Lock()

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        started = time.monotonic()
        envelope = json.loads(body)
        if self.on_deliver is not None:
            self.on_deliver(envelope)
        with self._lock:
            self.bodies.append(envelope)
            finished = time.monotonic()
            self.spans.setdefault(envelope["key"], []).append((started, finished))
        if envelope["key"] in self.failing:
            return Outcome.failed("503")
        return Outcome.ok()

    def keys(self) -> list[str]:
        return [body["key"] for body in self.bodies]


def worker_for(
    store: Store,
    sink: Sink,
    clock: Clock,
    *,
    lease: timedelta = timedelta(minutes=5),
    **options: Any,
) -> DeliveryWorker:
    return DeliveryWorker(
        store,
        sink,
        SinkRoute("app"),
        RetryPolicy(),
        lease=lease,
        clock=clock,
        seed=5,
        **options,
    )


def by_key(store: Store) -> dict[str, Delivery]:
    """Return every outbox row by the key of its event."""
    with store.session() as session:
        loaded = load_many(session, [row.id for row in rows(store)])
    return {event.key: delivery for delivery, event in loaded}


def test_chain_stops_at_first_failure(store, caplog):
    """After a2 fails, the rest of its chain stays pending, unleased, unattempted."""
    log_events(store, [(f"a{n}", "cus_a", n) for n in range(1, 9)])
    sink = RecordingSink(failing=("a2",))
    worker = worker_for(store, sink, Clock())

    with caplog.at_level(logging.INFO, logger="syncd.delivery"):
        worker.run_once()

    after = by_key(store)
    later = [f"a{n}" for n in range(3, 9)]
    assert sink.keys() == ["a1", "a2"]
    assert after["a1"].status == "delivered"
    assert after["a2"].status == "pending"
    assert after["a2"].attempts == 1
    assert [after[key].status for key in later] == ["pending"] * 6
    assert [after[key].lease_owner for key in later] == [None] * 6
    assert [after[key].attempts for key in later] == [0] * 6
    assert "passed to another worker" not in caplog.text


def test_failed_row_holds_back_until_due(store):
    """The rows behind a failed one wait until it is due and delivered."""
    log_events(store, [("a1", "cus_a", 1), ("a2", "cus_a", 2), ("b1", "cus_b", 3)])
    sink = RecordingSink(failing=("a1",))
    clock = Clock()
    worker = worker_for(store, sink, clock)

    drain(worker)
    while_failing = sink.keys()
    sink.failing.clear()
    clock.advance(0.2)  # the first retry waits at least 0.5 s
    drain(worker)
    before_due = sink.keys()
    clock.advance(3600)
    drain(worker)

    assert while_failing == ["a1", "b1"]
    assert before_due == ["a1", "b1"]
    assert sink.keys() == ["a1", "b1", "a1", "a2"]


def test_superseded_follows_round(store):
    """An older event after a newer one delivered in the same round is superseded."""
    log_events(store, [("a_new", "cus_a", 10), ("a_old", "cus_a", 0)])
    sink = RecordingSink()
    worker = worker_for(store, sink, Clock(), ordered=False)

    rounds = [worker.run_once(), worker.run_once()]

    superseded = {body["key"]: body["superseded"] for body in sink.bodies}
    assert rounds == [2, 0]
    assert sink.keys() == ["a_new", "a_old"]
    assert superseded == {"a_new": False, "a_old": True}


def test_lost_lease_ends_chain(store):
    """A worker whose lease passed on ends that chain and gives back its rest."""
    log_events(store, [(f"a{n}", "cus_a", n) for n in range(1, 7)])
    clock = Clock()
    first_sink, second_sink = RecordingSink(), RecordingSink()
    lease = timedelta(seconds=60)
    first = worker_for(store, first_sink, clock, lease=lease)
    second = worker_for(store, second_sink, clock, lease=lease, batch=4)

    def overtake(envelope: dict) -> None:
        # The first delivery outlasts the lease, and the second worker claims
        # and delivers a1 and a2 meanwhile.
        if not second_sink.bodies:
            clock.advance(120)
            second.run_once()

    first_sink.on_deliver = overtake
    first_round = first.run_once()
    after_round = by_key(store)
    first_sink.on_deliver = None
    drain(first)
    drain(second)

    delivered = first_sink.keys() + second_sink.keys()
    assert first_round == 1
    assert second_sink.keys() == ["a1", "a2"]
    assert after_round["a3"].status == "pending"
    assert after_round["a3"].lease_owner is None
    assert sorted(delivered) == ["a1", "a1", "a2", "a3", "a4", "a5", "a6"]
    assert {row.status for row in rows(store)} == {"delivered"}


def test_interleaved_workers_keep_order(store):
    """A second worker that claims during the first one's round keeps each resource
    in order and delivers every event once."""
    specs = [(f"r{r}_{n}", f"cus_{r}", n) for n in range(4) for r in range(6)]
    log_events(store, specs)
    clock = Clock()
    sink = RecordingSink()
    first = worker_for(store, sink, clock)
    second = worker_for(store, sink, clock)
    second_handled: list[int] = []

    def interleave(envelope: dict) -> None:
        # The second worker runs one round inside the first worker's first
        # delivery, and only once, although its deliveries call this too.
        sink.on_deliver = None
        second_handled.append(second.run_once())

    sink.on_deliver = interleave
    first_handled = first.run_once()
    drain(first)
    drain(second)

    keys = sink.keys()
    assert first_handled > 0
    assert second_handled[0] > 0
    assert sorted(keys) == sorted(key for key, _, _ in specs)
    for resource in range(6):
        sequence = [int(k.split("_")[1]) for k in keys if k.startswith(f"r{resource}_")]
        assert sequence == [0, 1, 2, 3], f"resource {resource} out of order"


def test_threaded_workers_keep_order(store):
    """Two worker threads on one backlog deliver each resource in order, once,
    never two events of one resource at the same time."""
    specs = [(f"r{r}_{n}", f"cus_{r}", n) for n in range(8) for r in range(12)]
    log_events(store, specs)
    sink = RecordingSink()
    sink.on_deliver = lambda envelope: time.sleep(0.002)
    workers = [worker_for(store, sink, Clock()) for _ in range(2)]
    errors: list[BaseException] = []

    def run(worker: DeliveryWorker) -> None:
        idle_rounds = 0
        while idle_rounds < 3:
            try:
                handled = worker.run_once()
            except StoreUnavailableError:
                # Two SQLite writers: one may find the database locked.
                handled = 0
            except BaseException as exc:
                errors.append(exc)
                return
            idle_rounds = 0 if handled else idle_rounds + 1
            if not handled:
                time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for worker in workers:
        drain(worker)

    keys = sink.keys()
    assert errors == []
    assert sorted(keys) == sorted(key for key, _, _ in specs)
    assert {row.status for row in rows(store)} == {"delivered"}
    for resource in range(12):
        names = [f"r{resource}_{n}" for n in range(8)]
        assert [k for k in keys if k in names] == names, f"r{resource} out of order"
        spans = [sink.spans[name][0] for name in names]
        for earlier, later in zip(spans, spans[1:], strict=False):
            assert earlier[1] <= later[0], f"r{resource} delivered two at once"
