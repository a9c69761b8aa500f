"""Fixtures for end-to-end runs against the simulated Stripe on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from syncd.simulator import SimulatedStripe
from tests.e2e.support import API_KEY, WEBHOOK_SECRET, FakeClock, Harness


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[SimulatedStripe]:
    """Serve a simulated Stripe on a free loopback port."""
    sim = SimulatedStripe(
        api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=3, clock=clock
    )
    sim.base_url = sim.serve()  # type: ignore[attr-defined]
    yield sim
    sim.stop()


@pytest.fixture
def harness_factory(clock: FakeClock) -> Iterator[Any]:
    """Return a function that opens harnesses, closed after the test."""
    opened: list[Harness] = []

    def open_harness(config: Any) -> Harness:
        harness = Harness(config, clock)
        opened.append(harness)
        return harness

    yield open_harness
    for harness in opened:
        harness.close()
