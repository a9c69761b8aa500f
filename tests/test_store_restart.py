"""Real PostgreSQL restarts under syncd, on a throwaway cluster.

One ``syncd run`` under webhook, polling and delivery load goes through a
fast restart and a stop, pause and start of the server; the first tests
check different parts of what it returned, logged and stored. The last two
stop the server in the middle of a poll and of a reconcile.

The cluster is a PostgreSQL 15 cluster of this module's own on a free
loopback port, never the server of ``SYNCD_TEST_DATABASE_URL``. The tests are
skipped where the PostgreSQL binaries (or, under root, the ``postgres`` user)
are missing.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from bench.store_outage import (
    SINK_DOWN,
    SINK_UP,
    WRITER_DOWN,
    WRITER_UP,
    Outage,
    OutageReport,
    ThrowawayCluster,
    cluster_problem,
    run_outages,
    throwaway_cluster,
)
from syncd.models import Event
from syncd.simulator import SimulatedStripe
from syncd.store import load_cursor
from tests.e2e.support import (
    API_KEY,
    T0,
    WEBHOOK_SECRET,
    FakeClock,
    Harness,
    make_config,
)

pytestmark = pytest.mark.e2e

_database_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    problem = cluster_problem()
    if problem is not None:
        pytest.skip(f"no throwaway PostgreSQL cluster: {problem}")
    with throwaway_cluster() as started:
        yield started


@pytest.fixture
def cluster_url(cluster: ThrowawayCluster) -> Iterator[str]:
    """Return the URL of a new, empty database; leave the server running."""
    if not cluster.running():
        cluster.start()
    yield cluster.create_database(f"syncd_{next(_database_numbers)}")
    if not cluster.running():
        cluster.start()


@pytest.fixture(scope="module")
def outage_report(cluster: ThrowawayCluster, tmp_path_factory) -> OutageReport:
    """Run syncd under load through a fast restart and a stop, pause and start."""
    url = cluster.create_database("syncd_load")
    outages = [
        Outage("restart -m fast", cluster.restart),
        Outage("stop, pause, start", cluster.stop, cluster.start, pause=2.0),
    ]
    return run_outages(
        url,
        outages,
        clients=3,
        interval=0.05,
        steady=1.5,
        # The wait ends as soon as everything is delivered; the long limit is
        # for a busy machine, where sink catch-up after the outage is slower.
        settle=120.0,
        workdir=tmp_path_factory.mktemp("outage"),
        echo=lambda _line: None,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[SimulatedStripe]:
    sim = SimulatedStripe(
        api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=7, clock=clock
    )
    sim.base_url = sim.serve()  # type: ignore[attr-defined]
    yield sim
    sim.stop()


def test_outage_returns_503_then_2xx(outage_report: OutageReport):
    """While the server is down webhooks get 503; after it, 2xx again."""
    restart, stop = outage_report.outages
    for outage in (restart, stop):
        assert outage.recovered_after is not None, outage.name
        assert outage.acknowledged_while_down == [], outage.name
        assert set(outage.statuses) <= {"200", "503", "connection failed"}
    assert stop.statuses_while_down["503"] > 0
    assert set(stop.statuses_while_down) <= {"503", "connection failed"}
    assert outage_report.unexpected_statuses == Counter()


def test_outage_healthz_503_then_200(outage_report: OutageReport):
    """/healthz returns 503 while the server is down and 200 after each outage."""
    restart, stop = outage_report.outages
    assert stop.health_while_down["503"] > 0
    assert set(stop.health_while_down) == {"503"}
    assert restart.health_after == 200
    assert stop.health_after == 200


def test_outage_loses_nothing(outage_report: OutageReport):
    """Every 2xx webhook and polled event is logged once and reaches the sink."""
    assert outage_report.acknowledged > 0
    assert outage_report.polled > 0
    assert outage_report.lost_webhooks == []
    assert outage_report.lost_polled == []
    assert outage_report.duplicated == []
    assert outage_report.undelivered == []
    assert outage_report.missing_lines == []


def test_outage_logged_once_each_way(outage_report: OutageReport):
    """The writer logs one outage line and one recovery line per outage."""
    lines = outage_report.log_lines
    assert outage_report.outages_with_503 >= 1
    assert lines[WRITER_DOWN] == outage_report.outages_with_503
    assert lines[WRITER_UP] == lines[WRITER_DOWN]
    assert 1 <= lines[SINK_DOWN] <= len(outage_report.outages)
    assert lines[SINK_UP] == lines[SINK_DOWN]
    assert lines["Traceback"] == 0


class _StopBeforeRequest:
    """An httpx request hook that stops the cluster before the Nth request.

    Before stopping, it waits until the database contains ``committed``
    events, because a listing run may fetch the next page while it still
    commits the current one. It records the URL of every request, so a test
    can see where a run began.
    """

    def __init__(
        self, cluster: ThrowawayCluster, url: str, number: int, committed: int
    ) -> None:
        self.cluster = cluster
        self.url = url
        self.number: int | None = number
        self.committed = committed
        self.urls: list[httpx.URL] = []

    def __call__(self, request: httpx.Request) -> None:
        self.urls.append(request.url)
        if len(self.urls) != self.number:
            return
        deadline = time.monotonic() + 30
        while self._count_events() < self.committed:
            assert time.monotonic() < deadline, "the first page was not committed"
            time.sleep(0.01)
        self.cluster.stop()

    def _count_events(self) -> int:
        with psycopg.connect(self.url) as connection:
            row = connection.execute("SELECT count(*) FROM events").fetchone()
        return row[0] if row else 0


def _harness(url: str, simulator, clock, cluster, **table):
    """Return a harness whose second request stops the cluster after page 1."""
    harness = Harness(make_config(url, simulator.base_url, page_size=3, **table), clock)
    hook = _StopBeforeRequest(cluster, url, number=2, committed=3)
    harness.client.event_hooks = {"request": [hook]}
    return harness, hook


def _logged(harness: Harness) -> tuple[Counter[str], int]:
    """Return the logged keys with their counts, and the sum of ``duplicates``."""
    with harness.runtime.store.session() as session:
        keys = Counter(session.execute(select(Event.key)).scalars())
        repeats = session.execute(select(func.sum(Event.duplicates))).scalar_one()
    return keys, repeats or 0


def test_poll_meets_stop_then_resumes(cluster, cluster_url, simulator, clock):
    """A poll whose second page meets a stopped server fails; the next resumes."""
    for age in range(9, 0, -1):
        simulator.emit("invoice.paid", created=T0 - age)
    harness, hook = _harness(cluster_url, simulator, clock, cluster, webhooks=False)
    try:
        (failed,) = harness.runner.poll()
        cluster.start()
        after_failure, _ = _logged(harness)
        with harness.runtime.store.session() as session:
            cursor = load_cursor(session, "payments", "events")
        first_run_urls = hook.urls
        hook.number, hook.urls = None, []
        (resumed,) = harness.runner.poll()
        keys, repeats = _logged(harness)
    finally:
        harness.close()

    assert not failed.ok
    assert "database error" in (failed.error or "")
    assert len(after_failure) == 3
    assert cursor["next"] is not None
    assert hook.urls[0] == first_run_urls[1]
    assert resumed.ok
    assert set(keys) == set(simulator.truth())
    assert max(keys.values()) == 1
    assert repeats == 0


def test_reconcile_meets_stop_then_recovers(cluster, cluster_url, simulator, clock):
    """A reconcile that meets a stopped server fails; the next one logs the rest."""
    # Older than the minute a scheduled reconcile leaves to webhooks in flight.
    for age in range(69, 60, -1):
        simulator.emit("invoice.paid", created=T0 - age)
    harness, hook = _harness(cluster_url, simulator, clock, cluster, webhooks=True)
    try:
        failed = harness.runner.reconcile()
        cluster.start()
        hook.number = None
        after_failure, _ = _logged(harness)
        recovered = harness.runner.reconcile()
        keys, _ = _logged(harness)
    finally:
        harness.close()

    assert not failed.ok
    assert "database error" in (failed.error or "")
    assert len(after_failure) == 3
    assert recovered.ok
    assert recovered.new == 6
    assert set(keys) == set(simulator.truth())
    assert max(keys.values()) == 1
