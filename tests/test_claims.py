"""Claims of outbox rows: chains per resource, what blocks them, sharing."""

from __future__ import annotations

import random
from datetime import timedelta

from sqlalchemy import select

from syncd import claims
from syncd.models import Delivery
from syncd.outbox import (
    RetryPolicy,
    claim,
    load_for_delivery,
    record_outcome,
)
from syncd.sinks.base import Outcome
from syncd.store import Store
from tests.delivery_support import LEASE, T0, log_events


def claim_keys(store: Store, owner: str, now=T0, **options) -> list[str]:
    """Claim for ``owner`` and return the claimed events' keys, in order."""
    settings = {"limit": 10, "ordered": True, "chain": 10, **options}
    with store.session() as session:
        ids = claim(session, "app", owner, now, lease=LEASE, **settings)
        return [load_for_delivery(session, i)[1].key for i in ids]


def fail(store: Store, key: str, now=T0) -> None:
    """Store a failed attempt for the row of ``key``; it is due again later."""
    with store.session() as session:
        row = row_of(session, key)
        record_outcome(
            session, row, Outcome.failed("503"), RetryPolicy(), now, random.Random(1)
        )


def row_of(session, key: str) -> Delivery:
    for row in session.execute(select(Delivery)).scalars():
        if load_for_delivery(session, row.id)[1].key == key:
            return row
    raise AssertionError(f"no delivery row for {key}")


def test_chain_in_provider_order(store):
    """A resource logged newest first is claimed as one chain, oldest first."""
    log_events(store, [("a3", "cus_a", 30), ("a2", "cus_a", 20), ("a1", "cus_a", 10)])

    assert claim_keys(store, "w") == ["a1", "a2", "a3"]


def test_ties_ordered_by_offset(store):
    """Events of one resource with the same provider time go in log order."""
    log_events(store, [("a1", "cus_a", 0), ("a2", "cus_a", 0), ("a3", "cus_a", 0)])

    assert claim_keys(store, "w") == ["a1", "a2", "a3"]


def test_chains_come_whole(store):
    """Rows come chain by chain, and each chain starts at its first row."""
    log_events(
        store,
        [
            ("b1", "cus_b", 5),
            ("a2", "cus_a", 2),
            ("a1", "cus_a", 1),
            ("b2", "cus_b", 6),
        ],
    )

    assert claim_keys(store, "w") == ["b1", "b2", "a1", "a2"]
    assert claim_keys(store, "other") == []


def test_chain_length_limited(store):
    """A resource gives at most ``chain`` rows; the next claim continues it."""
    log_events(store, [(f"a{n}", "cus_a", n) for n in range(1, 5)])

    first = claim_keys(store, "w", chain=2)
    second = claim_keys(store, "other", chain=2)

    assert first == ["a1", "a2"]
    assert second == []


def test_limit_cuts_chain_after_its_start(store):
    """A cut at the limit keeps the start of the chain, never a later part."""
    log_events(store, [("a1", "cus_a", 1), ("a2", "cus_a", 2), ("a3", "cus_a", 3)])

    assert claim_keys(store, "w", limit=2) == ["a1", "a2"]


def test_failed_row_holds_back_chain(store):
    """A failed row that is not due yet holds back its resource's later rows."""
    log_events(
        store,
        [
            ("a1", "cus_a", 1),
            ("a2", "cus_a", 2),
            ("a3", "cus_a", 3),
            ("b1", "cus_b", 4),
        ],
    )
    fail(store, "a1")

    before_due = claim_keys(store, "w", now=T0 + timedelta(milliseconds=100))
    when_due = claim_keys(store, "w", now=T0 + timedelta(hours=2))

    assert before_due == ["b1"]
    assert when_due == ["a1", "a2", "a3", "b1"]  # b1's lease has run out


def test_leased_row_holds_back_chain(store):
    """Rows behind a row leased to another worker are not claimed."""
    log_events(store, [("a1", "cus_a", 1), ("a2", "cus_a", 2)])
    first = claim_keys(store, "w", chain=1)

    during_lease = claim_keys(store, "other")
    after_lease = claim_keys(store, "other", now=T0 + LEASE + timedelta(seconds=1))

    assert first == ["a1"]
    assert during_lease == []
    assert after_lease == ["a1", "a2"]


def test_rows_without_resource_independent(store):
    """A failing row without a resource holds back no other such row."""
    log_events(store, [("x1", None, 1), ("x2", None, 2)])
    fail(store, "x1")

    assert claim_keys(store, "w", now=T0 + timedelta(milliseconds=100)) == ["x2"]


def test_dead_row_holds_nothing(store):
    """A dead row is no longer pending, so the rest of its chain is claimed."""
    log_events(store, [("a1", "cus_a", 1), ("a2", "cus_a", 2)])
    with store.session() as session:
        row = row_of(session, "a1")
        record_outcome(
            session,
            row,
            Outcome.failed("410"),
            RetryPolicy(max_attempts=1),
            T0,
            random.Random(1),
        )

    assert claim_keys(store, "w") == ["a2"]


def test_share_leaves_half(store):
    """With ``share``, a claim takes half of the ready rows, rounded up."""
    log_events(store, [(f"r{n}", f"cus_{n}", n) for n in range(5)])

    first = claim_keys(store, "w", share=True)
    second = claim_keys(store, "other", share=True)
    last = claim_keys(store, "third", share=True)

    assert first == ["r0", "r1", "r2"]
    assert second == ["r3"]
    assert last == ["r4"]


def test_stale_candidates_keep_chain_start(store, monkeypatch):
    """Candidates chosen before another worker's claim yield no chain without its start.

    The candidates of the second worker are taken before the first worker
    claims ``a1``, as when two claims run at once. The second worker must
    not claim ``a2`` without ``a1``.
    """
    log_events(store, [("a1", "cus_a", 1), ("a2", "cus_a", 2), ("b1", "cus_b", 3)])
    with store.session() as session:
        stale = claims.ordered_candidates(session, "app", T0, 10, 10)
    first = claim_keys(store, "w", chain=1, limit=1)
    monkeypatch.setattr(claims, "ordered_candidates", lambda *args: stale)

    second = claim_keys(store, "other")

    with store.session() as session:
        a2 = row_of(session, "a2")
    assert first == ["a1"]
    assert second == ["b1"]
    assert a2.lease_owner is None
