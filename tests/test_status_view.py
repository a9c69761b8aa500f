"""The tables of ``syncd status``: layout, colour and how figures read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from syncd.queries import ProviderStatus, SinkStatus
from syncd.status_view import render_status
from syncd.units import format_age, to_utc_iso

NOW = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ago(**delta: float) -> str:
    return to_utc_iso(NOW - timedelta(**delta))


def later(**delta: float) -> str:
    return to_utc_iso(NOW + timedelta(**delta))


def providers() -> list[ProviderStatus]:
    payments = ProviderStatus(
        name="payments",
        mode="webhooks+reconcile",
        last_webhook=ago(seconds=45),
        last_reconcile={
            "status": "ok",
            "started_at": ago(minutes=3),
            "finished_at": ago(minutes=2),
            "listed": 12,
            "new": 1,
            "error": None,
        },
        events_logged=2,
        events_last_hour={"webhook": 1, "poll": 0, "reconcile": 1},
        events_last_day={"webhook": 1, "poll": 0, "reconcile": 1},
        missed_webhooks_recovered=1,
        missed_webhook_rate=0.5,
    )
    shop = ProviderStatus(
        name="shop",
        mode="polling",
        last_poll={
            "status": "failed",
            "started_at": ago(hours=2, minutes=5),
            "finished_at": ago(hours=2),
            "listed": 0,
            "new": 0,
            "error": "GET [red]/orders[/red] returned 500",
        },
        cursors={"orders": {"high_water": ago(days=1, hours=3)}},
        cursor_lag_seconds={"orders": 97_200.0},
        rate_limit={"remaining": 17, "limit": 40, "reset_at": later(minutes=4)},
    )
    return [payments, shop]


SINKS = [SinkStatus("archive", "jsonl", backlog=3, oldest_pending_age_seconds=75)]


def render(
    items: list[ProviderStatus] | None = None, *, terminal: bool = False, width=None
) -> str:
    return render_status(
        providers() if items is None else items,
        SINKS,
        NOW,
        terminal=terminal,
        width=width,
    )


def test_plain_has_no_escape_codes() -> None:
    """Text for a pipe has no escape codes and no trailing spaces."""
    text = render()

    assert "\x1b" not in text
    for line in text.splitlines():
        assert line == line.rstrip()


def test_plain_one_row_per_provider() -> None:
    """Plain text keeps one row per provider however wide it gets."""
    lines = render(width=40).splitlines()

    (payments,) = [line for line in lines if line.startswith("| payments ")]
    assert "webhooks+reconcile" in payments
    assert "45s ago" in payments
    assert "ok 3m ago" in payments
    assert "1 of 2 (50.0%)" in payments


def test_plain_figures_of_polling_provider() -> None:
    """A polling provider shows its failed poll, cursor lag and budget."""
    text = render()

    (shop,) = [line for line in text.splitlines() if line.startswith("| shop ")]
    assert "failed 2h 5m ago" in shop
    assert "orders 1d 3h" in shop
    assert "17 of 40 left" in shop
    assert "resets in 4m" in text


def test_terminal_has_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal gets colour: the failed poll is styled."""
    monkeypatch.delenv("NO_COLOR", raising=False)

    text = render(terminal=True, width=250)

    assert ANSI.search(text)
    assert "failed" in ANSI.sub("", text)


def test_terminal_no_color_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """With NO_COLOR set, a terminal gets no escape codes, not even bold."""
    monkeypatch.setenv("NO_COLOR", "1")

    text = render(terminal=True, width=250)

    assert "\x1b[" not in text
    assert "│ payments " in text
    assert "failed" in text


def test_terminal_empty_no_color_keeps_colour(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An empty NO_COLOR does not turn colour off."""
    monkeypatch.setenv("NO_COLOR", "")

    assert ANSI.search(render(terminal=True, width=250))


def test_terminal_wide_layout() -> None:
    """A wide terminal gets one row per provider."""
    lines = ANSI.sub("", render(terminal=True, width=250)).splitlines()

    (row,) = [line for line in lines if line.startswith("│ payments ")]
    assert "webhooks+reconcile" in row


def test_terminal_narrow_layout() -> None:
    """A narrow terminal gets one column per provider, within its width."""
    lines = ANSI.sub("", render(terminal=True, width=80)).splitlines()

    (header,) = [line for line in lines if "payments" in line]
    assert "shop" in header
    (missed,) = [line for line in lines if line.startswith("│ missed webhooks")]
    assert "1 of 2 (50.0%)" in missed
    for line in lines:
        assert len(line) <= 80


def test_no_providers() -> None:
    """Without providers the output states it and still shows sinks."""
    text = render([])

    assert "No providers are configured." in text
    assert "archive" in text


def test_sink_row() -> None:
    """A sink row has kind, backlog, oldest pending age, dead and delivered."""
    (row,) = [line for line in render().splitlines() if line.startswith("| archive")]

    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells == ["archive", "jsonl", "3", "1m", "0", "0"]


def test_notes_are_literal() -> None:
    """Provider text with square brackets prints as is, not as markup."""
    lines = render().splitlines()

    assert "shop: last poll failed: GET [red]/orders[/red] returned 500" in lines


def test_notes_list_gaps_and_quarantine() -> None:
    """Gaps and quarantined items are listed below the tables."""
    item = providers()[1]
    item.open_gaps = [
        {
            "listing": "orders",
            "since": ago(days=40),
            "until": ago(days=30),
            "reason": "older than the provider's 30-day retention",
            "detected_at": ago(hours=1),
        }
    ]
    item.quarantined = 2
    item.latest_quarantined = [
        {
            "listing": "orders",
            "last_seen_at": ago(minutes=1),
            "times_seen": 3,
            "reason": "missing 'type'",
        }
    ]

    lines = render([item]).splitlines()

    assert (
        f"shop: GAP orders: {ago(days=40)} to {ago(days=30)}, older than the "
        "provider's 30-day retention"
    ) in lines
    assert "shop: QUARANTINED items: 2 (latest first)" in lines
    assert f"  orders, last seen {ago(minutes=1)} (3x): missing 'type'" in lines


def rate_limit_lines(state: dict[str, Any] | None) -> list[str]:
    """Render a provider with this rate-limit state; return its cell's lines."""
    item = ProviderStatus(name="api", mode="polling", rate_limit=state)
    text = render_status([item], [], NOW, terminal=False)
    cells = []
    for line in text.splitlines():
        if line.startswith("| "):
            cells.append(line.strip("|").split("|")[-1].strip())
    return [cell for cell in cells[1:] if cell]


RATE_LIMIT_CASES = [
    pytest.param(None, ["-"], id="never-seen"),
    pytest.param(
        {"blocked_until": later(minutes=9), "reason": "Retry-After 540s"},
        ["waiting 9m"],
        id="waiting",
    ),
    pytest.param(
        {"blocked_until": ago(minutes=9), "reason": "Retry-After 540s"},
        ["last wait ended 9m ago"],
        id="wait-ended",
    ),
    pytest.param(
        {"remaining": 0, "reset_at": ago(seconds=30), "observed_at": ago(hours=1)},
        ["0 left", "reset 30s ago", "seen 1h 0m ago"],
        id="reset-passed",
    ),
]


@pytest.mark.parametrize(("state", "expected"), RATE_LIMIT_CASES)
def test_rate_limit_cell(state: dict[str, Any] | None, expected: list[str]) -> None:
    """The rate-limit cell reads the saved state as of the status time."""
    assert rate_limit_lines(state) == expected


def test_rate_limit_wait_note() -> None:
    """A wait in force is listed below the tables with its end and reason."""
    item = ProviderStatus(
        name="api",
        mode="polling",
        rate_limit={"blocked_until": later(minutes=9), "reason": "Retry-After 540s"},
    )

    lines = render([item]).splitlines()

    assert f"api: rate limited until {later(minutes=9)} (Retry-After 540s)" in lines


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3_599, "59m"),
        (3_600, "1h 0m"),
        (86_399, "23h 59m"),
        (90_000, "1d 1h"),
        (-5, "-5s"),
    ],
)
def test_format_age(seconds: float, text: str) -> None:
    """Ages read in their two largest units, minutes alone below an hour."""
    assert format_age(seconds) == text


def test_stopped_run_note_says_stopped() -> None:
    """A run that syncd's stop ended is noted as stopped, not failed."""
    items = providers()
    assert items[1].last_poll is not None
    items[1].last_poll = {
        **items[1].last_poll,
        "status": "stopped",
        "error": "syncd is stopping; the next start continues from the cursor",
    }

    lines = render(items).splitlines()

    note = "shop: last poll stopped: syncd is stopping; the next start continues"
    assert any(line.startswith(note) for line in lines)
    assert not any("last poll failed" in line for line in lines)
