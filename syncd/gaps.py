"""Spans of provider history that could not be listed, recorded and reported.

A gap opens when a cursor is older than the provider's retention, or when a
capped feed stops before reaching the cursor. Gaps stay in ``syncd status``
until a reconcile over resource listings covers them; a gap beyond the
provider's retention cannot be covered and stays open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from syncd.models import Gap
from syncd.store import Store
from syncd.units import to_utc_iso

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GapNotice:
    """A gap found during a run, before it is stored."""

    listing: str
    since: datetime
    until: datetime
    reason: str
    recoverable: bool

    def describe(self) -> str:
        return (
            f"{self.listing}: events from {to_utc_iso(self.since)} to "
            f"{to_utc_iso(self.until)} could not be listed ({self.reason})"
        )


def record_gap(store: Store, provider: str, notice: GapNotice, now: datetime) -> int:
    """Store an open gap and log it at ERROR; return its id."""
    gap = Gap(
        provider=provider,
        listing=notice.listing,
        since=notice.since,
        until=notice.until,
        reason=notice.reason,
        detected_at=now,
    )
    with store.session() as session:
        session.add(gap)
        session.flush()
        gap_id = gap.id
    log.error("%s: gap opened: %s", provider, notice.describe())
    assert gap_id is not None
    return gap_id


def resolve_gap(store: Store, gap_id: int, now: datetime) -> None:
    """Mark a gap as covered by a later run."""
    with store.session() as session:
        gap = session.get(Gap, gap_id)
        if gap is not None:
            gap.resolved_at = now
            log.warning(
                "%s: gap %s to %s is covered now",
                gap.provider,
                to_utc_iso(gap.since),
                to_utc_iso(gap.until),
            )


def open_gaps(store: Store, provider: str) -> list[Gap]:
    """Return the provider's gaps that no run has covered yet, oldest first."""
    with store.session() as session:
        statement = (
            select(Gap)
            .where(Gap.provider == provider, Gap.resolved_at.is_(None))  # type: ignore
            .order_by(Gap.since)  # type: ignore[arg-type]
        )
        return list(session.execute(statement).scalars())
