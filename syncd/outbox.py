"""The outbox: delivery rows beside the log, claimed under a lease.

Rows are created in the transaction that logs their event, so an event is
never in the log without its deliveries. Workers claim due rows with a lease
(on PostgreSQL also ``FOR UPDATE SKIP LOCKED``), so two workers never hold
one row at once; a row whose lease ran out (its worker crashed) is claimed
again and delivered again with the same idempotency key.

With per-resource ordering, a row is due only when no earlier row of the
same sink and resource is still pending, so one failing delivery holds back
later events of that resource and nothing else. A dead row stops holding.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from syncd.models import Delivery, Event
from syncd.sinks.base import Outcome


@dataclass(frozen=True)
class SinkRoute:
    """Which events go to one sink: provider names and type patterns.

    An empty tuple matches everything. Type patterns are shell-style
    (``invoice.*``).
    """

    sink: str
    providers: tuple[str, ...] = ()
    types: tuple[str, ...] = ()

    def matches(self, provider: str, event_type: str) -> bool:
        if self.providers and provider not in self.providers:
            return False
        return not self.types or any(
            fnmatch.fnmatchcase(event_type, pattern) for pattern in self.types
        )


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed delivery is tried again, and when it is given up."""

    max_attempts: int = 12
    max_age: timedelta = timedelta(days=3)
    initial_wait: float = 1.0
    max_wait: float = 3600.0

    def wait(
        self, attempts: int, retry_after: float | None, rng: random.Random
    ) -> float:
        """Return the wait before the next attempt: exponential, jittered."""
        ceiling = min(self.max_wait, self.initial_wait * 2 ** max(0, attempts - 1))
        wait = ceiling / 2 + rng.uniform(0, ceiling / 2)
        return min(self.max_wait, max(wait, retry_after or 0.0))


def idempotency_key(provider: str, key: str) -> str:
    """Return the stable idempotency key of one log entry, for every sink."""
    digest = hashlib.sha256(f"{provider}\0{key}".encode()).hexdigest()
    return f"syncd_{digest[:32]}"


def resource_of(provider: str, resource: str | None) -> str | None:
    return f"{provider}/{resource}" if resource else None


def create_deliveries(
    session: Session,
    routes: Sequence[SinkRoute],
    provider: str,
    events: Sequence[tuple[int, str, str | None]],
    now: datetime,
) -> int:
    """Insert a delivery row per (new event, matching sink); return the count.

    ``events`` are (offset, type, resource) of events logged in this
    transaction.
    """
    rows = [
        {
            "event_offset": offset,
            "sink": route.sink,
            "resource": resource_of(provider, resource),
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for offset, event_type, resource in events
        for route in routes
        if route.matches(provider, event_type)
    ]
    if rows:
        session.execute(insert(Delivery), rows)
    return len(rows)


def claim(
    session: Session,
    sink: str,
    owner: str,
    now: datetime,
    *,
    lease: timedelta,
    limit: int,
    ordered: bool,
) -> list[int]:
    """Lease up to ``limit`` due rows of ``sink`` to ``owner``; return their ids."""
    table = Delivery.__table__.c
    candidates = (
        select(table.id)
        .where(table.sink == sink, table.status == "pending")
        .where(table.next_attempt_at <= now)
        .where(or_(table.lease_until.is_(None), table.lease_until < now))
        .order_by(table.event_offset)
        .limit(limit)
    )
    if ordered:
        earlier = aliased(Delivery)
        candidates = candidates.where(
            ~exists().where(
                earlier.sink == table.sink,
                earlier.resource == table.resource,
                earlier.status == "pending",
                earlier.event_offset < table.event_offset,
            )
        )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True, of=Delivery)
    ids = list(session.execute(candidates).scalars())
    if not ids:
        return []

    claimed = session.execute(
        update(Delivery)
        .where(table.id.in_(ids))
        .where(or_(table.lease_until.is_(None), table.lease_until < now))
        .values(lease_owner=owner, lease_until=now + lease)
        .returning(table.id)
    )
    return sorted(claimed.scalars())


def load_for_delivery(
    session: Session, delivery_id: int
) -> tuple[Delivery, Event] | None:
    row = session.execute(
        select(Delivery, Event)
        .join(Event, Event.offset == Delivery.event_offset)  # type: ignore[arg-type]
        .where(Delivery.id == delivery_id)
    ).first()
    return (row[0], row[1]) if row else None


def newest_delivered_time(
    session: Session, sink: str, resource: str | None
) -> datetime | None:
    """Return the provider time of the newest event of a resource already delivered."""
    if resource is None:
        return None
    return session.execute(
        select(func.max(Event.occurred_at))
        .join(Delivery, Delivery.event_offset == Event.offset)  # type: ignore[arg-type]
        .where(
            Delivery.sink == sink,
            Delivery.resource == resource,
            Delivery.status == "delivered",
        )
    ).scalar_one_or_none()


def envelope(event: Event, delivery: Delivery, superseded: bool) -> bytes:
    """Return the JSON body sent to sinks, with the payload kept byte for byte."""
    meta: dict[str, Any] = {
        "id": idempotency_key(event.provider, event.key),
        "offset": event.offset,
        "provider": event.provider,
        "key": event.key,
        "type": event.type,
        "occurred_at": _iso(event.occurred_at),
        "first_seen_at": _iso(event.first_seen_at),
        "first_source": event.first_source,
        "resource": event.resource,
        "version": event.version,
        "superseded": superseded,
        "attempt": delivery.attempts + 1,
    }
    head = json.dumps(meta, ensure_ascii=False)[:-1]
    return f'{head}, "payload": {event.payload.strip()}}}'.encode()


def _iso(moment: datetime) -> str:
    from syncd.units import to_utc_iso

    return to_utc_iso(moment)


def record_outcome(
    session: Session,
    delivery: Delivery,
    outcome: Outcome,
    policy: RetryPolicy,
    now: datetime,
    rng: random.Random,
) -> str:
    """Store one attempt's outcome; return the row's new status."""
    delivery.attempts += 1
    delivery.lease_owner = None
    delivery.lease_until = None
    if outcome.delivered:
        delivery.status, delivery.delivered_at, delivery.last_error = (
            "delivered",
            now,
            None,
        )
        return delivery.status
    delivery.last_error = outcome.error
    too_old = now - delivery.created_at >= policy.max_age
    if delivery.attempts >= policy.max_attempts or too_old:
        delivery.status = "dead"
        return delivery.status
    wait = policy.wait(delivery.attempts, outcome.retry_after, rng)
    delivery.next_attempt_at = now + timedelta(seconds=wait)
    return delivery.status


def release(session: Session, owner: str) -> None:
    """Give back every lease ``owner`` still holds (on a clean stop)."""
    session.execute(
        update(Delivery)
        .where(Delivery.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


def retry(
    session: Session,
    ids: Sequence[int] = (),
    *,
    dead: bool = False,
    sink: str | None = None,
    now: datetime,
) -> int:
    """Make the given rows (or every dead row) due now; return how many."""
    statement = update(Delivery).values(
        status="pending",
        next_attempt_at=now,
        attempts=0,
        lease_owner=None,
        lease_until=None,
        created_at=now,
    )
    conditions = []
    if ids:
        conditions.append(Delivery.id.in_(ids))  # type: ignore[union-attr]
    if dead:
        conditions.append(Delivery.status == "dead")
    else:
        conditions.append(Delivery.status != "delivered")
    if sink:
        conditions.append(Delivery.sink == sink)
    return session.execute(statement.where(and_(*conditions))).rowcount


def replay(session: Session, route: SinkRoute, since: datetime, now: datetime) -> int:
    """Deliver again every matching event first logged at or after ``since``.

    Existing rows are made due again (same idempotency keys); events that have
    no row for this sink (a sink added later) get one. Returns the number of
    rows made due.
    """
    events = session.execute(
        select(Event.offset, Event.provider, Event.type, Event.resource)
        .where(Event.first_seen_at >= since)
        .order_by(Event.offset)  # type: ignore[arg-type]
    ).all()
    offsets = [e.offset for e in events if route.matches(e.provider, e.type)]
    if not offsets:
        return 0
    existing = set(
        session.execute(
            select(Delivery.event_offset).where(
                Delivery.sink == route.sink,
                Delivery.event_offset.in_(offsets),  # type: ignore
            )
        ).scalars()
    )
    session.execute(
        update(Delivery)
        .where(Delivery.sink == route.sink, Delivery.event_offset.in_(existing))  # type: ignore
        .values(
            status="pending",
            next_attempt_at=now,
            attempts=0,
            lease_owner=None,
            lease_until=None,
            created_at=now,
        )
    )
    missing = [e for e in events if e.offset in set(offsets) - existing]
    for event in missing:
        create_deliveries(
            session,
            [route],
            event.provider,
            [(event.offset, event.type, event.resource)],
            now,
        )
    return len(offsets)
