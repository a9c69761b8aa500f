"""Gauges read from the database: cursor lag per listing and sink backlogs.

The daemon refreshes them from a scheduled job, not on each ``GET /metrics``,
so a scrape never waits for the database on the server's event loop.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select

from syncd.errors import StoreUnavailableError
from syncd.metrics import Metrics
from syncd.models import Cursor, Delivery
from syncd.store import Store
from syncd.units import parse_time

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5

# Stores whose last refresh failed, so that an outage is logged once instead
# of every REFRESH_SECONDS.
_failing_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def refresh_gauges(
    store: Store, metrics: Metrics, sinks: Iterable[str], now: datetime
) -> None:
    """Set the cursor lag and sink backlog gauges from the database.

    A database error leaves the gauges at their last values. The first failed
    refresh of an outage is logged, and so is the first refresh after it.
    """
    try:
        with store.session() as session:
            cursors = session.execute(
                select(Cursor.provider, Cursor.listing, Cursor.state)
            ).all()
            counts = session.execute(
                select(Delivery.sink, Delivery.status, func.count()).group_by(
                    Delivery.sink, Delivery.status
                )
            ).all()
    except StoreUnavailableError as exc:
        if store not in _failing_stores:
            log.warning(
                "metrics not refreshed until the store is available again: %s", exc
            )
            _failing_stores.add(store)
        return
    if store in _failing_stores:
        _failing_stores.discard(store)
        log.info("metrics refreshed again")
    for provider, listing, state in cursors:
        high_water = json.loads(state).get("high_water")
        if high_water:
            lag = (now - parse_time(high_water)).total_seconds()
            metrics.cursor_lag.labels(provider, listing).set(lag)
    by_sink = {(sink, status): count for sink, status, count in counts}
    for sink in sinks:
        metrics.sink_backlog.labels(sink).set(by_sink.get((sink, "pending"), 0))
        metrics.sink_dead_backlog.labels(sink).set(by_sink.get((sink, "dead"), 0))
