"""Tables of the event log and of what is stored beside it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, Integer, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field, SQLModel

from connectors.base import FIELD_LIMITS


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back as an aware UTC datetime.

    SQLite keeps no offset, so values are written as naive UTC there and the
    offset is attached again on reading. Microseconds are kept on both stores.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}; syncd stores aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# The largest 64-bit signed integer: the maximum of a BIGINT on PostgreSQL and
# of an INTEGER on SQLite, so no offset or row id is larger.
MAX_BIGINT = 2**63 - 1


def _time(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable))


class Event(SQLModel, table=True):
    """One entry of the event log: one per (provider, key), whoever brought it.

    ``webhook_seen_at`` and ``poll_seen_at`` record when each stream first saw
    the event (reconcile counts as polling); ``duplicates`` counts arrivals
    after the first.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("provider", "key", name="uq_events_provider_key"),
        Index("ix_events_provider_type", "provider", "type"),
        Index("ix_events_resource", "provider", "resource"),
        {"sqlite_autoincrement": True},
    )

    offset: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    provider: str = Field(max_length=64)
    key: str = Field(max_length=FIELD_LIMITS["key"])
    type: str = Field(max_length=FIELD_LIMITS["type"])
    occurred_at: datetime = _time(nullable=False)
    first_seen_at: datetime = _time(nullable=False)
    first_source: str = Field(max_length=16)
    webhook_seen_at: datetime | None = _time()
    poll_seen_at: datetime | None = _time()
    duplicates: int = 0
    resource: str | None = Field(default=None, max_length=FIELD_LIMITS["resource"])
    version: str | None = Field(default=None, max_length=FIELD_LIMITS["version"])
    payload: str = Field(sa_column=Column(Text, nullable=False))


class Cursor(SQLModel, table=True):
    """The position of a provider's listing; ``state`` is JSON owned by the poller."""

    __tablename__ = "cursors"

    provider: str = Field(primary_key=True, max_length=64)
    listing: str = Field(primary_key=True, max_length=128)
    state: str = Field(sa_column=Column(Text, nullable=False))
    etag: str | None = None
    last_modified: str | None = None
    updated_at: datetime = _time(nullable=False)


class Run(SQLModel, table=True):
    """One poll or reconcile run of one provider, with its counts."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_provider_kind", "provider", "kind", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    trigger: str = Field(max_length=16)
    status: str = Field(default="running", max_length=16)
    started_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()
    window_since: datetime | None = _time()
    window_until: datetime | None = _time()
    requests: int = 0
    listed: int = 0
    new: int = 0
    already: int = 0
    by_type: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    error: str | None = Field(default=None, sa_column=Column(Text))


class SourceStats(SQLModel, table=True):
    """Arrivals per provider and source, counted once per committed batch."""

    __tablename__ = "source_stats"

    provider: str = Field(primary_key=True, max_length=64)
    source: str = Field(primary_key=True, max_length=16)
    received: int = 0
    duplicates: int = 0
    last_at: datetime | None = _time()


class Gap(SQLModel, table=True):
    """A span of provider time syncd could not list, reported until resolved.

    ``reason`` says why (beyond the provider's retention, a capped feed);
    ``resolved_at`` is set once a later run has listed the span in full.
    """

    __tablename__ = "gaps"
    __table_args__ = (Index("ix_gaps_provider", "provider", "resolved_at"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=64)
    listing: str = Field(max_length=128)
    since: datetime = _time(nullable=False)
    until: datetime = _time(nullable=False)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    detected_at: datetime = _time(nullable=False)
    resolved_at: datetime | None = _time()


class Quarantine(SQLModel, table=True):
    """A listed item that its connector could not read, kept with the reason.

    One row per distinct item text: a poll that lists the same bad item
    again raises ``times_seen`` and ``last_seen_at`` instead of adding a row.
    ``digest`` is the SHA-256 of ``item`` in hex.
    """

    __tablename__ = "quarantine"
    __table_args__ = (
        UniqueConstraint(
            "provider", "listing", "digest", name="uq_quarantine_provider_item"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=64)
    listing: str = Field(max_length=128)
    digest: str = Field(max_length=64)
    item: str = Field(sa_column=Column(Text, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    seen_at: datetime = _time(nullable=False)
    last_seen_at: datetime = _time(nullable=False)
    times_seen: int = 1


class Delivery(SQLModel, table=True):
    """One event's delivery to one sink: the outbox row.

    Rows are created in the transaction that logs the event. ``status`` is
    ``pending`` (due at ``next_attempt_at``), ``delivered`` or ``dead``
    (attempts or age exhausted; a person retries it). A worker owns a row
    while ``lease_until`` is in the future; an expired lease (a crashed
    worker) makes the row claimable again, so a delivery can repeat but is
    never lost. ``resource`` is ``provider/resource`` for per-resource order.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("event_offset", "sink", name="uq_deliveries_event_sink"),
        Index("ix_deliveries_due", "sink", "status", "next_attempt_at"),
        Index("ix_deliveries_resource", "sink", "resource", "id"),
        Index("ix_deliveries_status_resource", "sink", "status", "resource"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
    )
    event_offset: int = Field(sa_column=Column(BigInteger, nullable=False))
    sink: str = Field(max_length=64)
    resource: str | None = Field(default=None, max_length=600)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    created_at: datetime = _time(nullable=False)
    first_queued_at: datetime | None = _time()
    next_attempt_at: datetime = _time(nullable=False)
    delivered_at: datetime | None = _time()
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _time()
    last_error: str | None = Field(default=None, sa_column=Column(Text))
