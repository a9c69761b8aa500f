"""A host clock minutes off the providers': timestamp errors and the skew warning."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from syncd.store import Store
from tests.webhook_apps import BY_NAME, T0, App, Clock, open_app, row_counts

SKEWED = T0 + 10 * 60  # this host's clock, 10 minutes ahead of the providers'


@pytest.fixture
def app(store: Store) -> Iterator[App]:
    with open_app(store, Clock(SKEWED)) as opened:
        yield opened


def skew_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
        and "clock may be skewed" in record.getMessage()
    ]


@pytest.mark.parametrize("name", ["stripe", "standard", "rest"])
def test_skewed_clock_401(app: App, store: Store, name: str) -> None:
    """A fresh webhook at a host 10 minutes ahead gets 401 for the timestamp."""
    provider = BY_NAME[name]
    before = row_counts(store)

    response = app.post(provider.path, provider.body, provider.signed(provider.body))

    assert response.status_code == 401
    assert "tolerance" in response.json()["error"]
    assert "timestamp" in response.json()["error"]
    assert row_counts(store) == before


def test_skew_warning_once(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Three stale webhooks in a row log one clock-skew warning."""
    caplog.set_level(logging.INFO, logger="syncd.intake")
    provider = BY_NAME["stripe"]
    for _ in range(3):
        app.post(provider.path, provider.body, provider.signed(provider.body))

    warnings = skew_warnings(caplog)
    assert len(warnings) == 1
    assert warnings[0].startswith("stripe: ")
    assert "600s" in warnings[0]


def test_skew_warning_hourly(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """The warning repeats after an hour, not before."""
    caplog.set_level(logging.WARNING, logger="syncd.intake")
    provider = BY_NAME["stripe"]
    headers = provider.signed(provider.body)
    app.post(provider.path, provider.body, headers)
    app.clock.now += 3599
    app.post(provider.path, provider.body, provider.sign(provider.body, T0 + 3599))
    count_within_hour = len(skew_warnings(caplog))
    app.clock.now += 2
    app.post(provider.path, provider.body, provider.sign(provider.body, T0 + 3601))

    assert count_within_hour == 1
    assert len(skew_warnings(caplog)) == 2


def test_skew_warning_per_provider(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Each provider gets its own warning."""
    caplog.set_level(logging.WARNING, logger="syncd.intake")
    for name in ("stripe", "standard", "stripe", "standard"):
        provider = BY_NAME[name]
        app.post(provider.path, provider.body, provider.signed(provider.body))

    warnings = skew_warnings(caplog)
    assert len(warnings) == 2
    assert warnings[0].startswith("stripe: ")
    assert warnings[1].startswith("standard: ")


def test_signature_error_no_skew_warning(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong signature does not log the clock-skew warning."""
    caplog.set_level(logging.WARNING, logger="syncd.intake")
    provider = BY_NAME["stripe"]
    headers = provider.signed(b"something else")

    response = app.post(provider.path, provider.body, headers)

    assert response.status_code == 401
    assert skew_warnings(caplog) == []
