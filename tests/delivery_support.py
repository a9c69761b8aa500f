"""Helpers shared by the tests of sinks and delivery workers.

The ``sink_server`` and ``restore_logging`` fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from connectors.base import EventRecord
from syncd.delivery import DeliveryWorker
from syncd.models import Delivery
from syncd.outbox import SinkRoute
from syncd.runtime import policy_of, route_of
from syncd.sink_config import SinkConfig
from syncd.sinks import build_sink
from syncd.store import Store, record_events

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)


class Clock:
    """A settable clock for delivery workers."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_worker(
    store: Store,
    settings: SinkConfig,
    clock: Clock,
    *,
    lease: timedelta = LEASE,
    seed: int = 7,
) -> DeliveryWorker:
    """Build the worker of one configured sink, as the daemon does."""
    return DeliveryWorker(
        store,
        build_sink(settings),
        route_of(settings),
        policy_of(settings),
        ordered=settings.ordering == "resource",
        lease=lease,
        clock=clock,
        seed=seed,
    )


def drain(worker: DeliveryWorker) -> int:
    """Run the worker until it finds nothing due; return the rows handled."""
    total = 0
    while handled := worker.run_once():
        total += handled
    return total


def rows(store: Store) -> list[Delivery]:
    """Return every outbox row, in id order."""
    with store.session() as session:
        statement = select(Delivery).order_by(Delivery.id)  # type: ignore[arg-type]
        return list(session.execute(statement).scalars())


def verify_standard(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Check a Standard Webhooks signature without syncd's code."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = b".".join(
        [headers["webhook-id"].encode(), headers["webhook-timestamp"].encode(), body]
    )
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    offered = headers["webhook-signature"].split(" ")
    return any(hmac.compare_digest(expected, value) for value in offered)


def log_events(store: Store, specs: list[tuple[str, str | None, int]]) -> None:
    """Log events given as (key, resource, seconds after T0), in that order."""
    records = [
        EventRecord(
            key=key,
            type="customer.updated",
            occurred_at=T0 + timedelta(seconds=at),
            payload=json.dumps({"id": key}),
            resource=resource,
        )
        for key, resource, at in specs
    ]
    store.sink_routes = [SinkRoute("app")]
    with store.session() as session:
        record_events(session, "payments", "webhook", records, T0)
