"""The outbox: delivery rows, leases, ordering, retries and replay."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from connectors.base import EventRecord
from syncd.models import Delivery
from syncd.outbox import (
    RetryPolicy,
    SinkRoute,
    claim,
    create_deliveries,
    envelope,
    idempotency_key,
    load_for_delivery,
    record_outcome,
    replay,
    retry,
)
from syncd.sinks.base import Outcome
from syncd.store import record_events

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
APP = (SinkRoute("app"),)
DEFAULT_POLICY = RetryPolicy()


def log_events(store, specs, routes=APP, provider="payments"):
    """Log events given as (key, type, resource, seconds after T0)."""
    records = [
        EventRecord(
            key=key,
            type=kind,
            occurred_at=T0 + timedelta(seconds=at),
            payload=json.dumps({"id": key}),
            resource=resource,
        )
        for key, kind, resource, at in specs
    ]
    with store.session() as session:
        result = record_events(session, provider, "webhook", records, T0)
        create_deliveries(
            session,
            routes,
            provider,
            [
                (o, r.type, r.resource)
                for o, r in zip(result.new_offsets, result.new, strict=True)
            ],
            T0,
        )
    return result.new_offsets


def claim_ids(store, owner, now=T0, ordered=True, limit=10, sink="app"):
    with store.session() as session:
        return claim(
            session, sink, owner, now, lease=LEASE, limit=limit, ordered=ordered
        )


def finish(store, delivery_id, outcome, now=T0, policy=DEFAULT_POLICY):
    with store.session() as session:
        row = session.get(Delivery, delivery_id)
        return record_outcome(session, row, outcome, policy, now, random.Random(1))


def test_route_filters_provider_and_type():
    """A route matches by provider name and shell-style type pattern."""
    route = SinkRoute("app", providers=("payments",), types=("invoice.*",))
    assert route.matches("payments", "invoice.paid")
    assert not route.matches("payments", "customer.created")
    assert not route.matches("code", "invoice.paid")


def test_rows_created_per_matching_sink(store):
    """Each new event gets one row per sink whose route matches it."""
    routes = (SinkRoute("all"), SinkRoute("invoices", types=("invoice.*",)))
    log_events(
        store,
        [("evt_1", "invoice.paid", None, 0), ("evt_2", "customer.created", None, 1)],
        routes,
    )
    with store.session() as session:
        rows = session.execute(select(Delivery.sink, Delivery.event_offset)).all()
    assert sorted(sink for sink, _ in rows) == ["all", "all", "invoices"]


def test_claimed_row_not_claimed_twice(store):
    """A leased row is not handed to a second owner until the lease ends."""
    log_events(store, [("evt_1", "invoice.paid", None, 0)])
    first = claim_ids(store, "worker-a")
    second = claim_ids(store, "worker-b")
    after_lease = claim_ids(store, "worker-b", now=T0 + LEASE + timedelta(seconds=1))
    assert len(first) == 1
    assert second == []
    assert after_lease == first


def test_concurrent_claims_disjoint(store):
    """Threads claiming at once never receive the same row."""
    log_events(store, [(f"evt_{n}", "invoice.paid", None, n) for n in range(40)])
    claimed: dict[str, list[int]] = {}

    def worker(name):
        ids = []
        while batch := claim_ids(store, name, ordered=False, limit=3):
            ids.extend(batch)
        claimed[name] = ids

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [i for ids in claimed.values() for i in ids]
    assert len(every) == 40
    assert len(set(every)) == 40


def test_failing_row_holds_its_resource_only(store):
    """A failed delivery holds back later events of its resource, not others."""
    log_events(
        store,
        [
            ("evt_1", "customer.updated", "customer:cus_1", 0),
            ("evt_2", "customer.updated", "customer:cus_1", 1),
            ("evt_3", "customer.updated", "customer:cus_2", 2),
        ],
    )
    first = claim_ids(store, "w")
    assert len(first) == 2
    finish(store, first[0], Outcome.failed("503"))
    finish(store, first[1], Outcome.ok())

    later = claim_ids(store, "w", now=T0 + timedelta(hours=2))

    with store.session() as session:
        keys = [load_for_delivery(session, i)[1].key for i in later]
    assert keys == ["evt_1"]


def test_retry_until_dead(store):
    """A delivery failing max_attempts times ends dead."""
    log_events(store, [("evt_1", "invoice.paid", None, 0)])
    policy = RetryPolicy(max_attempts=3)
    statuses = []
    now = T0
    for _ in range(3):
        ids = claim_ids(store, "w", now=now)
        statuses.append(finish(store, ids[0], Outcome.failed("boom"), now, policy))
        now += timedelta(hours=2)
    assert statuses == ["pending", "pending", "dead"]
    assert claim_ids(store, "w", now=now) == []


def test_retry_after_respected(store):
    """A receiver's Retry-After sets the earliest next attempt."""
    log_events(store, [("evt_1", "invoice.paid", None, 0)])
    ids = claim_ids(store, "w")
    finish(store, ids[0], Outcome.failed("429", retry_after=120))
    assert claim_ids(store, "w", now=T0 + timedelta(seconds=119)) == []
    assert claim_ids(store, "w", now=T0 + timedelta(seconds=121)) == ids


def test_backoff_grows_with_jitter():
    """Waits double per attempt within jitter and stop at the maximum."""
    policy = RetryPolicy(initial_wait=1, max_wait=60)
    rng = random.Random(3)
    waits = [policy.wait(attempt, None, rng) for attempt in range(1, 10)]
    assert 0.5 <= waits[0] <= 1
    assert 4 <= waits[3] <= 8
    assert waits[-1] <= 60


def test_retry_dead_makes_due(store):
    """'retry --dead' makes dead rows pending with fresh attempts."""
    log_events(store, [("evt_1", "invoice.paid", None, 0)])
    ids = claim_ids(store, "w")
    finish(store, ids[0], Outcome.failed("x"), policy=RetryPolicy(max_attempts=1))
    with store.session() as session:
        count = retry(session, dead=True, now=T0)
    assert count == 1
    assert claim_ids(store, "w") == ids


def test_replay_same_key_and_backfill(store):
    """Replay makes delivered rows due again and adds rows for a new sink."""
    log_events(store, [("evt_1", "invoice.paid", None, 0)])
    ids = claim_ids(store, "w")
    finish(store, ids[0], Outcome.ok())
    with store.session() as session:
        again = replay(session, SinkRoute("app"), T0 - timedelta(hours=1), T0)
        added = replay(session, SinkRoute("late"), T0 - timedelta(hours=1), T0)
    assert again == 1
    assert added == 1
    assert claim_ids(store, "w") == ids
    assert len(claim_ids(store, "w", sink="late")) == 1


def test_envelope_keeps_payload_exact(store):
    """The envelope embeds the stored payload text unchanged, big integers too."""
    record = EventRecord(
        key="ord_1",
        type="orders/create",
        occurred_at=T0,
        payload='{"id": 820982911946154508, "name": "Zoë"}',
    )
    with store.session() as session:
        result = record_events(session, "shop", "webhook", [record], T0)
        create_deliveries(
            session,
            [SinkRoute("app")],
            "shop",
            [(result.new_offsets[0], record.type, None)],
            T0,
        )
    ids = claim_ids(store, "w")
    with store.session() as session:
        delivery, event = load_for_delivery(session, ids[0])
        body = envelope(event, delivery, superseded=False)
    assert b'"id": 820982911946154508' in body
    assert "Zoë".encode() in body
    assert json.loads(body)["id"] == idempotency_key("shop", "ord_1")


def test_idempotency_key_stable():
    """The idempotency key depends only on provider and dedup key."""
    assert idempotency_key("payments", "evt_3") == idempotency_key("payments", "evt_3")
    assert idempotency_key("payments", "evt_3") != idempotency_key("other", "evt_3")


def test_resource_order_follows_provider_time(store):
    """Events of one resource logged newest first are claimed oldest first."""
    log_events(store, [("evt_new", "customer.updated", "customer:cus_1", 60),
                       ("evt_old", "customer.created", "customer:cus_1", 0)])
    first = claim_ids(store, "w")
    with store.session() as session:
        keys = [load_for_delivery(session, i)[1].key for i in first]
    assert keys == ["evt_old"]
