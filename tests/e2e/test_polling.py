"""Polling with cursors against the simulated Stripe (webhooks off)."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from syncd.models import Event
from syncd.store import load_cursor
from tests.e2e.support import T0, make_config


def logged_keys(store) -> Counter[str]:
    with store.session() as session:
        return Counter(session.execute(select(Event.key)).scalars())


def polling_config(database_url, simulator, **overrides):
    return make_config(
        database_url,
        simulator.base_url,
        webhooks=False,
        start_from="2024-05-01T09:00:00Z",
        page_size=3,
        **overrides,
    )


def test_poll_same_second_group_across_pages(
    database_url, simulator, harness_factory, clock
):
    """A group of events in one second split over pages arrives once each."""
    for _ in range(7):
        simulator.emit("invoice.paid", created=T0 - 30)
    simulator.emit("customer.created", created=T0 - 40)
    harness = harness_factory(polling_config(database_url, simulator))

    reports = harness.runner.poll()

    assert reports[0].ok
    assert reports[0].pages == 3
    keys = logged_keys(harness.runtime.store)
    assert set(keys) == set(simulator.truth())
    assert max(keys.values()) == 1


def test_poll_event_visible_late(database_url, simulator, harness_factory, clock):
    """An event listed only after a newer one was polled is still logged."""
    harness = harness_factory(polling_config(database_url, simulator))
    harness.runner.poll()
    late = simulator.emit("charge.succeeded", created=T0 - 5, visible_delay=20)
    newer = simulator.emit("charge.succeeded", created=T0 - 2)

    harness.runner.poll()
    assert set(logged_keys(harness.runtime.store)) == {newer["id"]}

    clock.advance(30)
    harness.runner.poll()
    keys = logged_keys(harness.runtime.store)
    assert set(keys) == {late["id"], newer["id"]}
    assert max(keys.values()) == 1


def test_poll_cursor_follows_provider_time(
    database_url, simulator, harness_factory, clock
):
    """A completed poll stores the newest provider time seen, not this host's."""
    harness = harness_factory(polling_config(database_url, simulator))
    simulator.emit("invoice.paid", created=T0 - 10)
    clock.advance(600)

    harness.runner.poll()

    with harness.runtime.store.session() as session:
        state = load_cursor(session, "payments", "events")
    assert state["high_water"] == "2024-05-01T09:59:50.000000Z"
    assert state["next"] is None


def test_poll_with_host_clock_ahead(database_url, simulator, harness_factory, clock):
    """A host clock ten minutes ahead of the provider's loses no event."""
    harness = harness_factory(polling_config(database_url, simulator))
    simulator.emit("invoice.paid", created=T0 - 10)
    harness.runner.poll()
    ahead = harness.runner.clock
    harness.runner.clock = lambda: ahead() + 600
    later = simulator.emit("invoice.paid", created=T0 + 1)

    harness.runner.poll()

    assert later["id"] in logged_keys(harness.runtime.store)


def test_poll_resumes_after_failed_page(
    database_url, simulator, harness_factory, clock
):
    """A failure after page one keeps page one and resumes without loss."""
    for offset in range(9):
        simulator.emit("invoice.paid", created=T0 - 100 + offset)
    config = polling_config(database_url, simulator, max_attempts=1)
    harness = harness_factory(config)
    original = simulator._list_page
    calls = []

    def fail_second_page(query):
        # Queued while page one is served, so the next request fails.
        calls.append(query)
        if len(calls) == 1:
            simulator.fail_next(1, status=503)
        return original(query)

    simulator._list_page = fail_second_page
    failed = harness.runner.poll()[0]
    simulator._list_page = original

    assert not failed.ok
    assert len(logged_keys(harness.runtime.store)) == 3
    with harness.runtime.store.session() as session:
        state = load_cursor(session, "payments", "events")
    assert state["next"] is not None
    assert state.get("high_water") is None

    restarted = harness_factory(config)
    resumed = restarted.runner.poll()[0]
    assert resumed.ok
    keys = logged_keys(restarted.runtime.store)
    assert set(keys) == set(simulator.truth())
    assert max(keys.values()) == 1
    assert resumed.already == 0


def test_poll_retries_with_retry_after(database_url, simulator, harness_factory, clock):
    """A 429 with Retry-After is retried after at least that wait."""
    simulator.emit("invoice.paid", created=T0 - 10)
    simulator.fail_next(1, status=429, retry_after=7)
    harness = harness_factory(
        polling_config(database_url, simulator, max_retry_wait="30s")
    )

    report = harness.runner.poll()[0]

    assert report.ok
    assert harness.sleeps[0] >= 7
    assert set(logged_keys(harness.runtime.store)) == set(simulator.truth())


def test_poll_gives_up_without_advancing(
    database_url, simulator, harness_factory, clock
):
    """Repeated 500s end the run as failed and leave the cursor unmoved."""
    harness = harness_factory(polling_config(database_url, simulator, max_attempts=3))
    harness.runner.poll()
    with harness.runtime.store.session() as session:
        before = load_cursor(session, "payments", "events")
    simulator.emit("invoice.paid", created=T0 + 5)
    clock.advance(60)
    simulator.fail_next(3, status=500)

    report = harness.runner.poll()[0]

    assert not report.ok
    assert len(harness.sleeps) == 2
    with harness.runtime.store.session() as session:
        after = load_cursor(session, "payments", "events")
    assert after == before
