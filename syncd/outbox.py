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

# Status returned by record_outcome for a failure that it did not store, because
# the lease had passed to another worker.
LEASE_LOST = "lease-lost"


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

    max_attempts: int = 40
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
        _new_row(offset, route.sink, resource_of(provider, resource), now)
        for offset, event_type, resource in events
        for route in routes
        if route.matches(provider, event_type)
    ]
    if rows:
        session.execute(insert(Delivery), rows)
    return len(rows)


def _new_row(
    offset: int, sink: str, resource: str | None, now: datetime
) -> dict[str, Any]:
    return {
        "event_offset": offset,
        "sink": sink,
        "resource": resource,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "first_queued_at": now,
        "next_attempt_at": now,
    }


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
        candidates = _first_of_each_resource(candidates, table)
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


def _first_of_each_resource(candidates: Any, table: Any) -> Any:
    """Keep only rows with no earlier pending row of the same sink and resource.

    Earlier means older provider time, then lower offset. A listing that
    returns newest first logs a resource's events in reverse, so log order
    alone would deliver them newest first.
    """
    mine = aliased(Event)
    earlier = aliased(Delivery)
    earlier_event = aliased(Event)
    return candidates.join(mine, mine.offset == table.event_offset).where(
        ~exists().where(
            earlier.sink == table.sink,
            earlier.resource == table.resource,
            earlier.status == "pending",
            earlier_event.offset == earlier.event_offset,
            or_(
                earlier_event.occurred_at < mine.occurred_at,
                and_(
                    earlier_event.occurred_at == mine.occurred_at,
                    earlier.event_offset < table.event_offset,
                ),
            ),
        )
    )


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


def renew(
    session: Session, delivery_id: int, owner: str, now: datetime, lease: timedelta
) -> bool:
    """Extend ``owner``'s lease of a pending row; return False if it was lost.

    A worker calls this just before each delivery. A batch claimed long ago
    may contain rows whose lease ran out and passed to another worker, and
    those must not be delivered a second time.
    """
    result = session.execute(
        update(Delivery)
        .where(
            Delivery.id == delivery_id,
            Delivery.lease_owner == owner,
            Delivery.status == "pending",
        )
        .values(lease_until=now + lease)
    )
    return result.rowcount == 1


def record_outcome(
    session: Session,
    delivery: Delivery,
    outcome: Outcome,
    policy: RetryPolicy,
    now: datetime,
    rng: random.Random,
    *,
    owner: str | None = None,
) -> str:
    """Store one attempt's outcome; return the row's new status.

    With ``owner``, the row is changed only while ``owner`` holds its lease,
    in one conditional UPDATE. When the lease has passed to another worker,
    a success still marks the row delivered but a failure changes nothing,
    and the new holder's lease is kept either way.
    """
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "lease_owner": None,
        "lease_until": None,
    }
    if outcome.delivered:
        values.update(status="delivered", delivered_at=now, last_error=None)
    else:
        values.update(status="pending", last_error=outcome.error)
        too_old = now - delivery.created_at >= policy.max_age
        if attempts >= policy.max_attempts or too_old:
            values["status"] = "dead"
        else:
            wait = policy.wait(attempts, outcome.retry_after, rng)
            values["next_attempt_at"] = now + timedelta(seconds=wait)
    statement = update(Delivery).where(Delivery.id == delivery.id)
    if owner is not None:
        statement = statement.where(Delivery.lease_owner == owner)
    if session.execute(statement.values(**values)).rowcount == 1:
        return values["status"]
    if not outcome.delivered:
        return LEASE_LOST
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id)
        .values(status="delivered", delivered_at=now, last_error=None)
    )
    return "delivered"


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
    """Make the given rows (or every dead row) due now; return how many.

    Delivered rows are left alone (replay delivers them again). The lease of
    a row that a worker is delivering right now is kept, so no second worker
    claims it before the first records its outcome.
    """
    conditions = []
    if ids:
        conditions.append(Delivery.id.in_(ids))  # type: ignore[union-attr]
    if dead:
        conditions.append(Delivery.status == "dead")
    else:
        conditions.append(Delivery.status != "delivered")
    if sink:
        conditions.append(Delivery.sink == sink)
    statement = update(Delivery).where(and_(*conditions)).values(**_due_again(now))
    return session.execute(statement).rowcount


def _due_again(now: datetime) -> dict[str, Any]:
    """Return the column values that make a row due now with fresh attempts.

    ``created_at`` restarts too, so that ``max_age`` counts from now.
    """
    return {
        "status": "pending",
        "next_attempt_at": now,
        "attempts": 0,
        "created_at": now,
    }


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
    matching = [e for e in events if route.matches(e.provider, e.type)]
    if not matching:
        return 0
    # One range query and updates by primary key, because long IN lists are
    # slow to match and can exceed the databases' limits on bound parameters.
    existing = dict(
        session.execute(
            select(Delivery.event_offset, Delivery.id).where(
                Delivery.sink == route.sink,
                Delivery.event_offset >= matching[0].offset,
            )
        ).all()
    )
    due = _due_again(now)
    updates = [
        {"id": existing[e.offset], **due} for e in matching if e.offset in existing
    ]
    if updates:
        session.execute(update(Delivery), updates)
    rows = [
        _new_row(e.offset, route.sink, resource_of(e.provider, e.resource), now)
        for e in matching
        if e.offset not in existing
    ]
    if rows:
        session.execute(insert(Delivery), rows)
    return len(matching)
