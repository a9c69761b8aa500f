"""The text form of ``syncd status``: a table of providers and one of sinks.

Tables are drawn with rich. On a terminal they fit its width and use colour,
unless ``NO_COLOR`` is set to a non-empty value (https://no-color.org), which
leaves them without any escape codes. Anywhere else (a pipe, a file, a test
runner) they are plain text with ASCII borders and no escape codes, and no
cell is wrapped. Open gaps, quarantined items and the errors of failed runs
are listed below the tables, one per line, so that ``grep`` finds them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from syncd.queries import ProviderStatus, SinkStatus
from syncd.units import format_age, parse_time

# Width given to rich when the output is not a terminal: wide enough that it
# never wraps a cell, since rich prints each line only as wide as the table.
PLAIN_WIDTH = 10_000
_MISSING = "-"


def render_status(
    providers: list[ProviderStatus],
    sinks: list[SinkStatus],
    now: datetime,
    *,
    terminal: bool,
    width: int | None = None,
) -> str:
    """Return the status tables and the notes below them as text.

    ``terminal`` chooses colour and the terminal's ``width``; without it the
    text is plain and as wide as the tables need.
    """
    console = Console(
        file=io.StringIO(),
        force_terminal=terminal,
        color_system=_color_system(terminal),
        width=width if terminal and width else PLAIN_WIDTH,
        highlight=False,
        emoji=False,
        markup=False,
    )
    border = box.ROUNDED if terminal else box.ASCII2
    if providers:
        console.print(_provider_table(console, providers, now, border))
    else:
        console.print("No providers are configured.")
    if sinks:
        console.print(_sink_table(sinks, border))
    for line in _notes(providers, now):
        console.print(line, overflow="ignore", crop=False, soft_wrap=True)
    output = console.file
    assert isinstance(output, io.StringIO)
    text = output.getvalue()
    if terminal:
        return text
    return "".join(line.rstrip() + "\n" for line in text.splitlines())


def _color_system(terminal: bool) -> str | None:
    """Return rich's colour system, None for text without escape codes.

    rich 15 reads ``NO_COLOR`` but drops only colours, and still writes bold
    and other styles. Without a colour system it writes no escape codes.
    """
    if not terminal or os.environ.get("NO_COLOR", ""):
        return None
    return "auto"


PROVIDER_FIGURES = (
    "mode",
    "last webhook",
    "last poll",
    "last reconcile",
    "cursor lag",
    "events 1h / 24h",
    "missed webhooks",
    "open gaps",
    "rate limit",
)


def _provider_table(
    console: Console, providers: list[ProviderStatus], now: datetime, border: box.Box
) -> Table:
    """Return a table with one row per provider, or one column each if narrow.

    A row per provider is easiest to scan, but its ten columns need a wide
    terminal. When that table is wider than the console, figures become rows
    and providers columns.
    """
    cells = {item.name: _provider_cells(item, now) for item in providers}
    table = _table("Providers", border)
    table.add_column("provider", no_wrap=True)
    for figure in PROVIDER_FIGURES:
        table.add_column(figure)
    for name, row in cells.items():
        table.add_row(Text(name, style="bold"), *row)
    unbounded = console.options.update(max_width=PLAIN_WIDTH)
    if Measurement.get(console, unbounded, table).maximum <= console.width:
        return table
    table = _table("Providers", border)
    table.add_column("")
    for name in cells:
        table.add_column(Text(name, style="bold"))
    for index, figure in enumerate(PROVIDER_FIGURES):
        table.add_row(figure, *(row[index] for row in cells.values()))
    return table


def _provider_cells(item: ProviderStatus, now: datetime) -> list[str | Text]:
    """Return the cells of one provider, in the order of PROVIDER_FIGURES."""
    return [
        item.mode,
        _ago(item.last_webhook, now) if item.last_webhook else "never",
        _run_cell(item.last_poll, now),
        _run_cell(item.last_reconcile, now),
        _cursor_cell(item.cursor_lag_seconds),
        _counts_cell(item.events_last_hour, item.events_last_day),
        _missed_cell(item),
        Text(str(len(item.open_gaps)), style="red" if item.open_gaps else ""),
        _rate_limit_cell(item.rate_limit, now),
    ]


def _sink_table(sinks: list[SinkStatus], border: box.Box) -> Table:
    table = _table("Sinks", border)
    table.add_column("sink")
    table.add_column("kind")
    for header in ("backlog", "oldest pending", "dead", "delivered"):
        table.add_column(header, justify="right")
    for sink in sinks:
        age = sink.oldest_pending_age_seconds
        table.add_row(
            Text(sink.name, style="bold"),
            sink.kind,
            str(sink.backlog),
            format_age(age) if age is not None else _MISSING,
            Text(str(sink.dead), style="red" if sink.dead else ""),
            str(sink.delivered),
        )
    return table


def _table(title: str, border: box.Box) -> Table:
    return Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=border,
        header_style="bold",
        show_lines=True,
    )


def _run_cell(run: dict[str, Any] | None, now: datetime) -> Text:
    """Return a run's status, age and counts, e.g. ``ok 3m ago``."""
    if run is None:
        return Text("never")
    status = run["status"]
    style = {"ok": "green", "failed": "red"}.get(status, "yellow")
    text = Text(status, style=style)
    text.append(f" {_ago(run['started_at'], now)}")
    text.append(f"\nlisted {run['listed']}, new {run['new']}")
    return text


def _cursor_cell(lags: dict[str, float | None]) -> str:
    """Return one ``listing lag`` line per cursor."""
    if not lags:
        return _MISSING
    return "\n".join(
        f"{listing} {format_age(lag) if lag is not None else 'none yet'}"
        for listing, lag in lags.items()
    )


def _counts_cell(last_hour: dict[str, int], last_day: dict[str, int]) -> str:
    """Return ``source hour / day`` lines for the sources with entries, or ``0``."""
    lines = [
        f"{source} {last_hour.get(source, 0)} / {count}"
        for source, count in last_day.items()
        if count
    ]
    return "\n".join(lines) or "0"


def _missed_cell(item: ProviderStatus) -> str:
    if item.mode == "polling":
        return _MISSING
    text = f"{item.missed_webhooks_recovered} of {item.events_logged}"
    if item.missed_webhook_rate is not None:
        text += f" ({item.missed_webhook_rate:.1%})"
    return text


def _rate_limit_cell(state: dict[str, Any] | None, now: datetime) -> Text:
    """Describe the saved rate-limit state as of ``now``.

    A wait that is still in force comes first (its reason is in the notes
    below the tables), then the remaining budget with its reset time and
    when it was seen.
    """
    if not state:
        return Text(_MISSING)
    lines: list[Text] = []
    blocked_until = state.get("blocked_until")
    if _wait_in_force(state, now) is not None:
        wait = (parse_time(blocked_until) - now).total_seconds()
        lines.append(Text(f"waiting {format_age(wait)}", style="yellow"))
    if "remaining" in state:
        lines.extend(_budget_lines(state, now))
    if not lines:
        lines.append(Text(f"last wait ended {_ago(blocked_until, now)}"))
    return Text("\n").join(lines)


def _budget_lines(state: dict[str, Any], now: datetime) -> Iterable[Text]:
    remaining = state["remaining"]
    limit = state.get("limit")
    left = f"{remaining} of {limit} left" if limit is not None else f"{remaining} left"
    yield Text(left, style="yellow" if remaining == 0 else "")
    reset_at = state.get("reset_at")
    if reset_at:
        reset = parse_time(reset_at)
        if reset > now:
            yield Text(f"resets in {format_age((reset - now).total_seconds())}")
        else:
            yield Text(f"reset {_ago(reset_at, now)}")
    if state.get("observed_at"):
        yield Text(f"seen {_ago(state['observed_at'], now)}")


def _notes(providers: list[ProviderStatus], now: datetime) -> Iterable[str]:
    """Yield the lines below the tables: waits, failed runs, gaps, quarantine."""
    for item in providers:
        wait = _wait_in_force(item.rate_limit, now)
        if wait is not None:
            assert item.rate_limit is not None
            yield (
                f"{item.name}: rate limited until {wait} "
                f"({item.rate_limit.get('reason') or 'no reason saved'})"
            )
        for kind, run in (("poll", item.last_poll), ("reconcile", item.last_reconcile)):
            if run is not None and run["error"]:
                ended = "stopped" if run["status"] == "stopped" else "failed"
                yield f"{item.name}: last {kind} {ended}: {run['error']}"
        for gap in item.open_gaps:
            yield (
                f"{item.name}: GAP {gap['listing']}: {gap['since']} to "
                f"{gap['until']}, {gap['reason']}"
            )
        if item.quarantined:
            yield f"{item.name}: QUARANTINED items: {item.quarantined} (latest first)"
        for entry in item.latest_quarantined:
            yield (
                f"  {entry['listing']}, last seen {entry['last_seen_at']} "
                f"({entry['times_seen']}x): {entry['reason'][:160]}"
            )


def _wait_in_force(state: dict[str, Any] | None, now: datetime) -> str | None:
    """Return the end of a saved wait that has not passed at ``now``, or None."""
    blocked_until = (state or {}).get("blocked_until")
    if not blocked_until or parse_time(blocked_until) <= now:
        return None
    return blocked_until


def _ago(moment: str | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - parse_time(moment)).total_seconds()
    if seconds < 0:
        return f"in {format_age(-seconds)}"
    return f"{format_age(seconds)} ago"
