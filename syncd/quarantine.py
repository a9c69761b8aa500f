"""The quarantine: listed items a connector could not read, kept for a person.

A listing run stores each rejected item here in the transaction of its page
and goes on, so one malformed item neither blocks the cursor forever nor
disappears. ``syncd status`` shows the count and the latest reasons.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from syncd.models import Quarantine
from syncd.store import Store
from syncd.units import to_utc_iso

MAX_REASON = 1000  # characters of a reason that are kept


def store_safe(text: str) -> str:
    """Return ``text`` with NUL and unpaired surrogates escaped for PostgreSQL."""
    text = text.replace("\x00", "\\u0000")
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def quarantine_items(
    session: Session,
    provider: str,
    listing: str,
    rejected: Sequence[tuple[str, str]],
    seen_at: datetime,
) -> None:
    """Store (item text, reason) pairs inside the caller's transaction."""
    if not rejected:
        return
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    table = Quarantine.__table__
    for raw, reason in rejected:
        item = store_safe(raw)
        statement = module.insert(table).values(
            provider=provider,
            listing=listing,
            digest=hashlib.sha256(item.encode("utf-8")).hexdigest(),
            item=item,
            reason=store_safe(reason)[:MAX_REASON],
            seen_at=seen_at,
            last_seen_at=seen_at,
            times_seen=1,
        )
        statement = statement.on_conflict_do_update(
            index_elements=["provider", "listing", "digest"],
            set_={
                "times_seen": table.c.times_seen + 1,
                "last_seen_at": statement.excluded.last_seen_at,
                "reason": statement.excluded.reason,
            },
        )
        session.execute(statement)


def quarantine_summary(
    store: Store, provider: str, latest: int = 5
) -> tuple[int, list[dict[str, Any]]]:
    """Return the number of quarantined items of a provider and the latest ones."""
    with store.session() as session:
        count = session.execute(
            select(func.count()).where(Quarantine.provider == provider)
        ).scalar_one()
        rows = session.execute(
            select(Quarantine)
            .where(Quarantine.provider == provider)
            .order_by(Quarantine.last_seen_at.desc(), Quarantine.id.desc())  # type: ignore
            .limit(latest)
        ).scalars()
        items = [
            {
                "listing": row.listing,
                "reason": row.reason,
                "item": row.item[:200],
                "seen_at": to_utc_iso(row.seen_at),
                "last_seen_at": to_utc_iso(row.last_seen_at),
                "times_seen": row.times_seen,
            }
            for row in rows
        ]
    return count, items
