"""Draining a delivery backlog: one worker against a raw loop to the same sink.

    python -m bench.deliveries                       # SQLite and PostgreSQL
    python -m bench.deliveries --events 2000 --no-postgres

Each figure starts from a new database whose outbox contains ``--events``
pending rows of one ``jsonl`` sink, spread over ``--resources`` resources.
Events are logged in pages of 100 with the newest first, as Stripe lists
them, so a resource's provider order is not its log order. Then one of
these drains the outbox and appends every event to a file, with an fsync
per line:

- ``raw``: the baseline. It reads the events in log order and writes each
  envelope to the sink, with no outbox bookkeeping.
- ``unordered``: a ``DeliveryWorker`` with ``ordering = "none"``.
- ``ordered``: a ``DeliveryWorker`` with ``ordering = "resource"``, once
  per resource count. The file is then checked: each resource's events must
  be in provider order.

A drain that is still running after ``--time-limit`` seconds stops, and its
rate counts the rows delivered so far. PostgreSQL figures use the database
of ``--postgres``, which is created and dropped, on 127.0.0.1 by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, select

from bench import pgdb
from syncd.delivery import BATCH, DeliveryWorker
from syncd.models import Delivery, Event
from syncd.outbox import RetryPolicy, SinkRoute, envelope, resource_of
from syncd.sink_config import SinkConfig
from syncd.sinks import build_sink
from syncd.sinks.base import Sink
from syncd.store import Store

PROVIDER = "payments"
SINK = "bench"
PAGE = 100  # events per logged page, newest first within a page
CHUNK = 1000  # rows per INSERT while filling, and per SELECT of the raw loop
RESOURCES = (10, 2000)


@dataclass
class Drain:
    """One timed drain: how many rows it delivered, and in how many seconds."""

    name: str
    delivered: int
    seconds: float
    finished: bool

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0


def fill(url: str, count: int, resources: int) -> None:
    """Log ``count`` events over ``resources`` resources, each with a pending row."""
    store = Store(url)
    now = datetime.now(UTC)
    start = now - timedelta(seconds=count)
    events = []
    for page_start in range(0, count, PAGE):
        page_end = min(count, page_start + PAGE)
        for index in reversed(range(page_start, page_end)):
            events.append(_event_row(index, resources, start, now))
    with store.session() as session:
        for first in range(0, count, CHUNK):
            session.execute(insert(Event), events[first : first + CHUNK])
    with store.session() as session:
        logged = session.execute(select(Event.offset, Event.resource)).all()
        rows = [_delivery_row(offset, resource, now) for offset, resource in logged]
        for first in range(0, len(rows), CHUNK):
            session.execute(insert(Delivery), rows[first : first + CHUNK])
    store.dispose()


def _event_row(
    index: int, resources: int, start: datetime, now: datetime
) -> dict[str, object]:
    key = f"evt_{index:08d}"
    return {
        "provider": PROVIDER,
        "key": key,
        "type": "customer.updated",
        "occurred_at": start + timedelta(seconds=index),
        "first_seen_at": now,
        "first_source": "poll",
        "poll_seen_at": now,
        "duplicates": 0,
        "resource": f"customer:cus_{index % resources}",
        "payload": json.dumps({"id": key, "object": "event", "n": index}),
    }


def _delivery_row(offset: int, resource: str, now: datetime) -> dict[str, object]:
    return {
        "event_offset": offset,
        "sink": SINK,
        "resource": resource_of(PROVIDER, resource),
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "first_queued_at": now,
        "next_attempt_at": now,
    }


def jsonl_sink(path: Path) -> Sink:
    return build_sink(SinkConfig(name=SINK, kind="jsonl", path=str(path)))


def drain_raw(url: str, path: Path, time_limit: float) -> Drain:
    """Write every pending row's envelope to the sink in log order, no bookkeeping."""
    store, sink = Store(url), jsonl_sink(path)
    stub = Delivery(attempts=0)
    delivered, last, finished = 0, 0, False
    started = time.perf_counter()
    while time.perf_counter() - started < time_limit:
        with store.session() as session:
            page = list(
                session.execute(
                    select(Event)
                    .join(Delivery, Delivery.event_offset == Event.offset)
                    .where(Delivery.sink == SINK, Event.offset > last)
                    .order_by(Event.offset)
                    .limit(CHUNK)
                ).scalars()
            )
        if not page:
            finished = True
            break
        for event in page:
            key = json.loads(event.payload)["id"]
            if not sink.deliver(envelope(event, stub, False), key, 0).delivered:
                raise RuntimeError(f"the raw loop failed to append to {path}")
            delivered += 1
        last = page[-1].offset
    seconds = time.perf_counter() - started
    sink.close()
    store.dispose()
    return Drain("raw", delivered, seconds, finished)


def drain_worker(
    url: str, path: Path, ordered: bool, time_limit: float, batch: int = BATCH
) -> Drain:
    """Run one DeliveryWorker's rounds until nothing is due or time is up."""
    store, sink = Store(url), jsonl_sink(path)
    worker = DeliveryWorker(
        store,
        sink,
        SinkRoute(SINK),
        RetryPolicy(),
        ordered=ordered,
        batch=batch,
        seed=1,
    )
    delivered, finished = 0, False
    started = time.perf_counter()
    while time.perf_counter() - started < time_limit:
        handled = worker.run_once()
        if handled == 0:
            finished = True
            break
        delivered += handled
    seconds = time.perf_counter() - started
    sink.close()
    store.dispose()
    name = "ordered" if ordered else "unordered"
    return Drain(name, delivered, seconds, finished)


def check_order(path: Path) -> int:
    """Return the number of lines; raise if a resource's events are out of order."""
    newest: dict[str, tuple[str, int]] = {}
    lines = 0
    with path.open(encoding="utf-8") as file:
        for line in file:
            event = json.loads(line)
            position = (event["occurred_at"], event["offset"])
            previous = newest.get(event["resource"])
            if previous is not None and previous > position:
                raise RuntimeError(
                    f"{event['key']} of {event['resource']} was delivered after "
                    f"a newer event of that resource"
                )
            newest[event["resource"]] = position
            lines += 1
    return lines


@dataclass
class Target:
    """A store to drain: SQLite files in ``workdir``, or one PostgreSQL database.

    The PostgreSQL database is emptied before each fill.
    """

    store: str
    workdir: Path
    postgres_url: str | None = None

    def fresh(self, name: str) -> str:
        """Return the URL of an empty database for one drain."""
        if self.postgres_url is None:
            return f"sqlite:///{self.workdir / name}.db"
        pgdb.reset(self.postgres_url)
        return self.postgres_url


def measure(
    target: Target, count: int, resources: int, mode: str, time_limit: float
) -> Drain:
    """Fill a fresh outbox and time one drain of it: raw, unordered or ordered."""
    name = f"{target.store}-{mode}-{resources}"
    url = target.fresh(name)
    fill(url, count, resources)
    path = target.workdir / f"{name}.jsonl"
    if mode == "raw":
        return drain_raw(url, path, time_limit)
    drain = drain_worker(url, path, mode == "ordered", time_limit)
    lines = check_order(path) if mode == "ordered" else drain.delivered
    if lines != drain.delivered:
        raise RuntimeError(f"{lines} lines in {path}, {drain.delivered} delivered")
    return drain


def measure_store(
    target: Target, count: int, resource_counts: tuple[int, ...], time_limit: float
) -> list[tuple[str, Drain]]:
    """Time the raw loop, the unordered worker, and the ordered one per count."""
    first = resource_counts[0]
    results = [
        ("raw loop", measure(target, count, first, "raw", time_limit)),
        ("unordered", measure(target, count, first, "unordered", time_limit)),
    ]
    for resources in resource_counts:
        drain = measure(target, count, resources, "ordered", time_limit)
        results.append((f"ordered, {resources:,} resources", drain))
    return results


def figures(
    target: Target, count: int, time_limit: float = 300.0
) -> list[tuple[str, float, float]]:
    """Return (figure, worker rate, raw loop rate) for each worker drain."""
    results = measure_store(target, count, RESOURCES, time_limit)
    base = results[0][1].rate
    return [(f"delivery drain, {label}", d.rate, base) for label, d in results[1:]]


def format_results(store: str, count: int, results: list[tuple[str, Drain]]) -> str:
    base = results[0][1].rate
    lines = [f"{store}, {count:,} rows:"]
    for label, drain in results:
        note = "" if drain.finished else f" (stopped after {drain.delivered:,})"
        lines.append(
            f"  {label:<28} {drain.rate:9,.1f} deliveries/s  "
            f"{drain.rate / base:6.3f}x of the raw loop{note}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--events", type=int, default=20_000, help="pending rows per drain"
    )
    parser.add_argument(
        "--resources",
        type=int,
        nargs="+",
        default=list(RESOURCES),
        help="resource counts of the ordered drains (default: %(default)s)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=300.0,
        help="seconds after which a drain stops (default: %(default)s)",
    )
    parser.add_argument(
        "--postgres",
        default=pgdb.DEFAULT_URL,
        help="PostgreSQL URL of the bench database, created and dropped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="skip the PostgreSQL drains"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    counts = tuple(args.resources)
    with tempfile.TemporaryDirectory(prefix="syncd-deliveries-") as directory:
        workdir = Path(directory)
        sqlite = Target("sqlite", workdir)
        results = measure_store(sqlite, args.events, counts, args.time_limit)
        print(format_results("sqlite", args.events, results), flush=True)
        if args.no_postgres:
            return
        with pgdb.bench_database(args.postgres) as url:
            postgres = Target("postgresql", workdir, url)
            results = measure_store(postgres, args.events, counts, args.time_limit)
        print(format_results("postgresql", args.events, results), flush=True)


if __name__ == "__main__":
    main()
