"""Read-side queries of the log for the command line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, case, func, or_, select

from syncd.gaps import open_gaps
from syncd.models import (
    MAX_BIGINT,
    Cursor,
    Delivery,
    Event,
    Run,
    SourceStats,
    UTCDateTime,
)
from syncd.outbox import idempotency_key
from syncd.patterns import is_pattern, pattern_to_regex
from syncd.quarantine import quarantine_summary
from syncd.rate_limit_state import load_rate_limit
from syncd.store import SOURCES, Store
from syncd.units import parse_time, to_utc_iso


def event_to_json(event: Event) -> dict[str, Any]:
    """Return the documented JSON form of one log entry."""
    return {
        "offset": event.offset,
        "provider": event.provider,
        "key": event.key,
        "type": event.type,
        "occurred_at": to_utc_iso(event.occurred_at),
        "first_seen_at": to_utc_iso(event.first_seen_at),
        "first_source": event.first_source,
        "webhook_seen_at": _iso(event.webhook_seen_at),
        "poll_seen_at": _iso(event.poll_seen_at),
        "duplicates": event.duplicates,
        "resource": event.resource,
        "version": event.version,
        "payload": json.loads(event.payload),
    }


def _iso(moment: datetime | None) -> str | None:
    return to_utc_iso(moment) if moment is not None else None


def list_events(
    store: Store,
    *,
    providers: tuple[str, ...] = (),
    types: tuple[str, ...] = (),
    sources: tuple[str, ...] = (),
    after: int = 0,
    limit: int = 100,
) -> list[Event]:
    """Return log entries in offset order, filtered as given."""
    statement = select(Event).where(Event.offset > after)  # type: ignore[operator]
    if providers:
        statement = statement.where(Event.provider.in_(providers))  # type: ignore
    if types:
        statement = statement.where(_type_condition(types))
    if sources:
        statement = statement.where(Event.first_source.in_(sources))  # type: ignore
    statement = statement.order_by(Event.offset).limit(limit)  # type: ignore[arg-type]
    with store.session() as session:
        return list(session.execute(statement).scalars())


def _type_condition(types: tuple[str, ...]) -> ColumnElement[bool]:
    """Return the condition that an entry's type is or matches one of ``types``.

    Exact types are compared with IN, so "_" and "%" in them are literal.
    Shell-style patterns become regular expressions, so that the database
    filters before LIMIT applies.
    """
    exact = [type_ for type_ in types if not is_pattern(type_)]
    conditions = [
        Event.type.regexp_match(pattern_to_regex(type_))  # type: ignore[attr-defined]
        for type_ in types
        if is_pattern(type_)
    ]
    if exact:
        conditions.append(Event.type.in_(exact))  # type: ignore[attr-defined]
    return or_(*conditions)


def find_event(store: Store, ref: str, provider: str | None = None) -> list[Event]:
    """Return the entries whose offset or dedup key is ``ref``."""
    statement = select(Event)
    offset = _offset_of(ref)
    if offset is not None:
        statement = statement.where(
            (Event.offset == offset) | (Event.key == ref)  # type: ignore[arg-type]
        )
    else:
        statement = statement.where(Event.key == ref)
    if provider:
        statement = statement.where(Event.provider == provider)
    with store.session() as session:
        return list(session.execute(statement).scalars())


def _offset_of(ref: str) -> int | None:
    """Return ``ref`` as an offset, or None when it can only be a key.

    Only ASCII digits up to MAX_BIGINT qualify, because the stores reject
    larger integers and ``int`` would also read other Unicode digits. The
    length check comes first, since ``int`` rejects strings over 4300 digits.
    """
    digits = ref.lstrip("0")
    if not (ref.isascii() and ref.isdigit()) or len(digits) > len(str(MAX_BIGINT)):
        return None
    number = int(ref)
    return number if number <= MAX_BIGINT else None


@dataclass
class ProviderStatus:
    """The figures ``syncd status`` shows for one provider.

    ``events_last_hour`` and ``events_last_day`` count the entries logged in
    that time, by the stream that brought each first. ``cursor_lag_seconds``
    is the time from each cursor's high-water mark (a provider time) to the
    status time, None before the first completed poll. ``missed_webhook_rate``
    is the share of logged entries that reconcile recovered, for providers
    that receive webhooks and have logged any. ``rate_limit`` is the state
    saved by the last run (see ``syncd.rate_limit_state``).
    """

    name: str
    mode: str
    events_by_source: dict[str, int] = field(default_factory=dict)
    received_by_source: dict[str, int] = field(default_factory=dict)
    duplicates_by_source: dict[str, int] = field(default_factory=dict)
    last_webhook: str | None = None
    last_poll: dict[str, Any] | None = None
    last_reconcile: dict[str, Any] | None = None
    cursors: dict[str, Any] = field(default_factory=dict)
    missed_webhooks_recovered: int = 0
    open_gaps: list[dict[str, Any]] = field(default_factory=list)
    quarantined: int = 0
    latest_quarantined: list[dict[str, Any]] = field(default_factory=list)
    events_logged: int = 0
    events_last_hour: dict[str, int] = field(default_factory=dict)
    events_last_day: dict[str, int] = field(default_factory=dict)
    missed_webhook_rate: float | None = None
    cursor_lag_seconds: dict[str, float | None] = field(default_factory=dict)
    rate_limit: dict[str, Any] | None = None


def provider_status(
    store: Store, name: str, mode: str, now: datetime | None = None
) -> ProviderStatus:
    """Collect the status of one provider from the log and its run records.

    ``now`` is the time that recent counts and cursor lags are measured from.
    """
    now = now or datetime.now(UTC)
    status = ProviderStatus(name=name, mode=mode)
    with store.session() as session:
        _count_events(session, status, now)
        for row in session.execute(
            select(SourceStats).where(SourceStats.provider == name)
        ).scalars():
            status.received_by_source[row.source] = row.received
            status.duplicates_by_source[row.source] = row.duplicates
            if row.source == "webhook":
                status.last_webhook = _iso(row.last_at)
        status.last_poll = _last_run(session, name, "poll")
        status.last_reconcile = _last_run(session, name, "reconcile")
        for cursor in session.execute(
            select(Cursor).where(Cursor.provider == name)
        ).scalars():
            if not cursor.listing.startswith("@"):
                status.cursors[cursor.listing] = json.loads(cursor.state)
        status.rate_limit = load_rate_limit(session, name)
    status.cursor_lag_seconds = {
        listing: _lag(state.get("high_water"), now)
        for listing, state in status.cursors.items()
    }
    if mode != "polling":
        status.missed_webhooks_recovered = status.events_by_source.get("reconcile", 0)
        if status.events_logged:
            status.missed_webhook_rate = (
                status.missed_webhooks_recovered / status.events_logged
            )
    status.open_gaps = [
        {
            "listing": gap.listing,
            "since": to_utc_iso(gap.since),
            "until": to_utc_iso(gap.until),
            "reason": gap.reason,
            "detected_at": to_utc_iso(gap.detected_at),
        }
        for gap in open_gaps(store, name)
    ]
    status.quarantined, status.latest_quarantined = quarantine_summary(store, name)
    return status


def _count_events(session: Any, status: ProviderStatus, now: datetime) -> None:
    """Count a provider's entries by first source: in all, last day, last hour.

    One pass over the provider's entries gives all three counts.
    """
    day_ago, hour_ago = now - timedelta(days=1), now - timedelta(hours=1)
    rows = session.execute(
        select(
            Event.first_source,
            func.count(),
            func.sum(case((Event.first_seen_at >= day_ago, 1), else_=0)),
            func.sum(case((Event.first_seen_at >= hour_ago, 1), else_=0)),
        )
        .where(Event.provider == status.name)
        .group_by(Event.first_source)
    ).all()
    status.events_last_day = dict.fromkeys(SOURCES, 0)
    status.events_last_hour = dict.fromkeys(SOURCES, 0)
    for source, total, last_day, last_hour in rows:
        status.events_by_source[source] = total
        status.events_last_day[source] = int(last_day or 0)
        status.events_last_hour[source] = int(last_hour or 0)
    status.events_logged = sum(status.events_by_source.values())


def _lag(high_water: str | None, now: datetime) -> float | None:
    if not high_water:
        return None
    return (now - parse_time(high_water)).total_seconds()


def _last_run(session: Any, name: str, kind: str) -> dict[str, Any] | None:
    run = session.execute(
        select(Run)
        .where(Run.provider == name, Run.kind == kind)
        .order_by(Run.id.desc())  # type: ignore[union-attr]
        .limit(1)
    ).scalar_one_or_none()
    if run is None:
        return None
    return {
        "status": run.status,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "listed": run.listed,
        "new": run.new,
        "error": run.error,
    }


def delivery_to_json(delivery: Delivery, event: Event) -> dict[str, Any]:
    """Return the JSON form of one outbox row, with its event's identity."""
    return {
        "id": delivery.id,
        "sink": delivery.sink,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "offset": event.offset,
        "provider": event.provider,
        "key": event.key,
        "type": event.type,
        "idempotency_key": idempotency_key(event.provider, event.key),
        "created_at": to_utc_iso(delivery.created_at),
        "next_attempt_at": to_utc_iso(delivery.next_attempt_at),
        "delivered_at": _iso(delivery.delivered_at),
        "last_error": delivery.last_error,
    }


def list_deliveries(
    store: Store,
    *,
    statuses: tuple[str, ...] = (),
    sinks: tuple[str, ...] = (),
    limit: int = 100,
) -> list[tuple[Delivery, Event]]:
    """Return outbox rows with their events, oldest first."""
    statement = select(Delivery, Event).join(
        Event,
        Event.offset == Delivery.event_offset,  # type: ignore[arg-type]
    )
    if statuses:
        statement = statement.where(Delivery.status.in_(statuses))  # type: ignore
    if sinks:
        statement = statement.where(Delivery.sink.in_(sinks))  # type: ignore
    statement = statement.order_by(Delivery.id).limit(limit)  # type: ignore[arg-type]
    with store.session() as session:
        return [(row[0], row[1]) for row in session.execute(statement).all()]


@dataclass
class SinkStatus:
    """The figures ``syncd status`` shows for one sink."""

    name: str
    kind: str
    backlog: int = 0
    oldest_pending_age_seconds: float | None = None
    dead: int = 0
    delivered: int = 0


def sink_status(store: Store, name: str, kind: str, now: datetime) -> SinkStatus:
    """Count one sink's pending, dead and delivered rows."""
    status = SinkStatus(name=name, kind=kind)
    with store.session() as session:
        counts = session.execute(
            select(
                Delivery.status,
                func.count(),
                func.min(
                    func.coalesce(Delivery.first_queued_at, Delivery.created_at),
                    type_=UTCDateTime(),
                ),
            )
            .where(Delivery.sink == name)
            .group_by(Delivery.status)
        ).all()
    for state, count, oldest in counts:
        if state == "pending":
            status.backlog = count
            oldest = oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest
            status.oldest_pending_age_seconds = (now - oldest).total_seconds()
        elif state == "dead":
            status.dead = count
        elif state == "delivered":
            status.delivered = count
    return status
