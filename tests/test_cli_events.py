"""Tests of ``syncd events``, ``syncd status`` and the help of every command."""

from __future__ import annotations

import json
import logging
import os
import pty
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import respx
from click.testing import CliRunner, Result

from connectors.base import EventRecord
from syncd import cli
from syncd.cli import main
from syncd.errors import StoreUnavailableError
from syncd.gaps import GapNotice, record_gap
from syncd.models import Run
from syncd.outbox import SinkRoute
from syncd.rate_limit_state import save_rate_limit
from syncd.reconcile import ProviderRunner
from syncd.store import Store, record_events, save_cursor
from syncd.units import parse_time, to_utc_iso

T0 = datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
API_TOKEN = "sk_test_INLINE_TOKEN"
WEBHOOK_SECRET = "whsec_INLINE_SECRET"
ENTRY_KEYS = {
    "offset",
    "provider",
    "key",
    "type",
    "occurred_at",
    "first_seen_at",
    "first_source",
    "payload",
}
# Non-ASCII text and integers beyond 64 bits must survive the JSON output.
RICH_PAYLOAD = (
    '{"id": "evt_1", "customer": "Zoë", "amount": 820982911946154508, '
    '"big": 1180591620717411303424}'
)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the root logger set-up that every ``syncd`` invocation does."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@dataclass
class Log:
    """A configuration file and the offsets of the entries in its database."""

    config: Path
    offsets: dict[str, int]


def make_record(key: str, type_: str, payload: str | None = None) -> EventRecord:
    return EventRecord(
        key=key,
        type=type_,
        occurred_at=T0 - timedelta(minutes=1),
        payload=payload or json.dumps({"id": key}),
    )


def write_config(directory: Path) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[daemon]
database = "sqlite:///{directory / "syncd.db"}"

[providers.payments]
connector = "stripe"
api_token = "{API_TOKEN}"
webhook_secret = "{WEBHOOK_SECRET}"

[providers.shop]
connector = "stripe"
api_token = "{API_TOKEN}"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    """Return a configuration whose log has five entries from three sources."""
    config = write_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    batches = [
        (
            "payments",
            "webhook",
            [
                make_record("evt_1", "invoice.paid", RICH_PAYLOAD),
                make_record("evt_2", "customer.created"),
            ],
        ),
        (
            "payments",
            "poll",
            [
                make_record("evt_1", "invoice.paid", RICH_PAYLOAD),
                make_record("evt_3", "invoice.paid"),
            ],
        ),
        ("payments", "reconcile", [make_record("evt_4", "invoice.voided")]),
        ("shop", "poll", [make_record("order_1", "invoice.paid")]),
    ]
    offsets: dict[str, int] = {}
    try:
        with store.session() as session:
            for provider, source, records in batches:
                result = record_events(session, provider, source, records, T0)
                for record, offset in zip(result.new, result.new_offsets, strict=True):
                    offsets[record.key] = offset
            save_cursor(
                session, "payments", "events", {"high_water": "2024-05-01T10:00Z"}, T0
            )
    finally:
        store.dispose()
    yield Log(config=config, offsets=offsets)


def invoke(*args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(
        main, list(args), prog_name="syncd", env={"SYNCD_CONFIG": None}
    )


def list_json(log: Log, *args: str) -> list[dict[str, Any]]:
    """Run ``events list --json`` with extra arguments and parse its output."""
    result = invoke("events", "list", "-c", str(log.config), "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def keys_of(entries: list[dict[str, Any]]) -> list[str]:
    return [entry["key"] for entry in entries]


# events list


def test_list_json_is_one_array(log: Log) -> None:
    """events list --json prints one JSON array of every entry in offset order."""
    entries = list_json(log)

    assert isinstance(entries, list)
    assert keys_of(entries) == ["evt_1", "evt_2", "evt_3", "evt_4", "order_1"]
    offsets = [entry["offset"] for entry in entries]
    assert offsets == sorted(offsets)


def test_list_json_entry_fields(log: Log) -> None:
    """Each listed entry has the documented fields with the stored values."""
    entry = list_json(log)[0]

    assert entry.keys() >= ENTRY_KEYS
    assert entry["offset"] == log.offsets["evt_1"]
    assert entry["provider"] == "payments"
    assert entry["key"] == "evt_1"
    assert entry["type"] == "invoice.paid"
    assert entry["occurred_at"] == "2024-05-01T09:59:00.123456Z"
    assert entry["first_seen_at"] == "2024-05-01T10:00:00.123456Z"
    assert entry["first_source"] == "webhook"


def test_list_json_payload_parsed(log: Log) -> None:
    """The payload is a parsed object, with non-ASCII text and big integers exact."""
    payload = list_json(log)[0]["payload"]

    assert isinstance(payload, dict)
    assert payload["customer"] == "Zoë"
    assert payload["amount"] == 820982911946154508
    assert payload["big"] == 2**70


def test_list_json_first_source(log: Log) -> None:
    """first_source is the stream that brought each entry first."""
    sources = {entry["key"]: entry["first_source"] for entry in list_json(log)}

    assert sources == {
        "evt_1": "webhook",
        "evt_2": "webhook",
        "evt_3": "poll",
        "evt_4": "reconcile",
        "order_1": "poll",
    }


def test_list_empty_log(tmp_path: Path) -> None:
    """An empty log lists as an empty JSON array."""
    config = write_config(tmp_path)
    Store(f"sqlite:///{tmp_path / 'syncd.db'}").dispose()

    result = invoke("events", "list", "-c", str(config), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_list_filter_provider(log: Log) -> None:
    """--provider keeps only that provider's entries."""
    assert keys_of(list_json(log, "--provider", "shop")) == ["order_1"]


def test_list_filter_type(log: Log) -> None:
    """--type keeps only entries of that type."""
    entries = list_json(log, "--type", "invoice.paid")

    assert keys_of(entries) == ["evt_1", "evt_3", "order_1"]


def test_list_filter_type_repeated(log: Log) -> None:
    """--type given twice keeps entries of either type."""
    entries = list_json(log, "--type", "customer.created", "--type", "invoice.voided")

    assert keys_of(entries) == ["evt_2", "evt_4"]


# Types for --type patterns. Some contain "_" and "%", the wildcards of SQL
# LIKE, which must match only themselves.
TYPED_RECORDS = [
    ("evt_1", "invoice.paid"),
    ("evt_2", "charge.failed"),
    ("evt_3", "invoice_paid"),
    ("evt_4", "invoiceXpaid"),
    ("evt_5", "charge.Failed"),
    ("evt_6", "discount.50%"),
    ("evt_7", "discount.50x"),
    ("evt_8", "invoice.voided"),
    ("evt_9", "Invoice.paid"),
    ("evt_10", "charge.bailed"),
]


@pytest.fixture
def typed_log(database_url: str, tmp_path: Path) -> Iterator[Path]:
    """Return a configuration whose log, on each database kind, has TYPED_RECORDS."""
    config = tmp_path / "typed.toml"
    config.write_text(
        f'[daemon]\ndatabase = "{database_url}"\n\n'
        '[providers.payments]\nconnector = "stripe"\n'
        f'api_token = "{API_TOKEN}"\n',
        encoding="utf-8",
    )
    store = Store(database_url)
    records = [make_record(key, type_) for key, type_ in TYPED_RECORDS]
    try:
        with store.session() as session:
            record_events(session, "payments", "poll", records, T0)
    finally:
        store.dispose()
    yield config


def typed_keys(config: Path, *args: str) -> list[str]:
    """Run ``events list --json`` on ``config`` and return the listed keys."""
    result = invoke("events", "list", "-c", str(config), "--json", *args)
    assert result.exit_code == 0, result.output
    return keys_of(json.loads(result.stdout))


def test_list_type_star_pattern(typed_log: Path) -> None:
    """--type 'invoice.*' keeps the types that start with 'invoice.'."""
    assert typed_keys(typed_log, "--type", "invoice.*") == ["evt_1", "evt_8"]


def test_list_type_question_pattern(typed_log: Path) -> None:
    """--type 'charge.?ailed' matches any one character in place of '?'."""
    keys = typed_keys(typed_log, "--type", "charge.?ailed")

    assert keys == ["evt_2", "evt_5", "evt_10"]


def test_list_type_bracket_pattern(typed_log: Path) -> None:
    """--type takes [seq] and [!seq] as fnmatch does."""
    assert typed_keys(typed_log, "--type", "charge.[fF]ailed") == ["evt_2", "evt_5"]
    assert typed_keys(typed_log, "--type", "charge.[!f]ailed") == ["evt_5", "evt_10"]


def test_list_type_pattern_case_sensitive(typed_log: Path) -> None:
    """A pattern matches case-sensitively, as a sink's types do."""
    assert typed_keys(typed_log, "--type", "Invoice.*") == ["evt_9"]


def test_list_type_sql_wildcards_literal(typed_log: Path) -> None:
    """'_' and '%' match only themselves, in exact types and in patterns."""
    assert typed_keys(typed_log, "--type", "invoice_paid") == ["evt_3"]
    assert typed_keys(typed_log, "--type", "discount.50%") == ["evt_6"]
    assert typed_keys(typed_log, "--type", "invoice_*") == ["evt_3"]
    assert typed_keys(typed_log, "--type", "*%") == ["evt_6"]


def test_list_type_pattern_and_exact(typed_log: Path) -> None:
    """Patterns and exact types combine: an entry matching either is listed."""
    keys = typed_keys(typed_log, "--type", "discount.*", "--type", "invoice.paid")

    assert keys == ["evt_1", "evt_6", "evt_7"]


def test_list_type_pattern_limit_after(typed_log: Path) -> None:
    """--limit and --after apply to the entries that match the pattern."""
    listed = invoke("events", "list", "-c", str(typed_log), "--json")
    offsets = {entry["key"]: entry["offset"] for entry in json.loads(listed.stdout)}
    after = str(offsets["evt_2"])

    keys = typed_keys(typed_log, "--type", "charge.*", "--after", after)
    limited = typed_keys(typed_log, "--type", "charge.*", "--limit", "2")

    assert keys == ["evt_5", "evt_10"]
    assert limited == ["evt_2", "evt_5"]


# One past the largest 64-bit signed integer, the widest that both stores keep.
TOO_LARGE = ["9223372036854775808", "99999999999999999999999"]
OFFSET_RANGE = "0<=x<=9223372036854775807"


@pytest.mark.parametrize("command", ["list", "tail"])
@pytest.mark.parametrize("after", [*TOO_LARGE, "-1"])
def test_after_out_of_range_rejected(typed_log: Path, command: str, after: str):
    """--after outside 0 to 2**63-1 is a usage error naming the range."""
    result = invoke("events", command, "-c", str(typed_log), "--after", after)

    assert result.exit_code == 2, result.output
    assert "'--after'" in result.stderr
    assert OFFSET_RANGE in result.stderr


def test_after_largest_offset_accepted(typed_log: Path) -> None:
    """--after 2**63-1 is valid and lists nothing."""
    assert typed_keys(typed_log, "--after", str(2**63 - 1)) == []


@pytest.mark.parametrize("limit", TOO_LARGE)
def test_limit_out_of_range_rejected(typed_log: Path, limit: str) -> None:
    """--limit above 2**63-1 is a usage error naming the range."""
    result = invoke("events", "list", "-c", str(typed_log), "--limit", limit)

    assert result.exit_code == 2, result.output
    assert "'--limit'" in result.stderr
    assert "1<=x<=9223372036854775807" in result.stderr


@pytest.mark.parametrize("ref", [*TOO_LARGE, "9" * 5000, "\u00b2"])
def test_show_number_beyond_offsets(typed_log: Path, ref: str) -> None:
    """A reference that cannot be an offset is looked up as a key only."""
    result = invoke("events", "show", "-c", str(typed_log), ref)

    assert result.exit_code == 1, result.output
    assert f"no log entry with offset or key {ref!r}" in result.stderr


def test_show_numeric_key_beyond_offsets(typed_log: Path, database_url: str):
    """A dedup key of digits too large for an offset is still found."""
    key = TOO_LARGE[1]
    store = Store(database_url)
    try:
        with store.session() as session:
            record_events(
                session, "payments", "poll", [make_record(key, "order.paid")], T0
            )
    finally:
        store.dispose()

    result = invoke("events", "show", "-c", str(typed_log), key)

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["key"] == key


def test_list_help_describes_type_patterns() -> None:
    """events list --help gives the pattern form of --type with an example."""
    result = invoke("events", "list", "--help")

    assert result.exit_code == 0, result.output
    assert "shell-style" in result.stdout
    assert "'invoice.*'" in result.stdout


def test_list_filter_source(log: Log) -> None:
    """--source keeps entries whose first source is that stream."""
    assert keys_of(list_json(log, "--source", "poll")) == ["evt_3", "order_1"]


def test_list_filter_after(log: Log) -> None:
    """--after keeps only entries with a larger offset."""
    after = str(log.offsets["evt_3"])

    assert keys_of(list_json(log, "--after", after)) == ["evt_4", "order_1"]


def test_list_filter_limit(log: Log) -> None:
    """--limit prints at most that many entries, the lowest offsets first."""
    assert keys_of(list_json(log, "--limit", "2")) == ["evt_1", "evt_2"]


def test_list_filters_combined(log: Log) -> None:
    """Filters combine: provider, type and offset all apply."""
    after = str(log.offsets["evt_1"])

    entries = list_json(
        log, "--provider", "payments", "--type", "invoice.paid", "--after", after
    )

    assert keys_of(entries) == ["evt_3"]


def test_list_invalid_source(log: Log) -> None:
    """An unknown --source is a usage error."""
    result = invoke("events", "list", "-c", str(log.config), "--source", "email")

    assert result.exit_code == 2
    assert "email" in result.stderr


def test_list_text(log: Log) -> None:
    """Without --json, events list prints one line per entry."""
    result = invoke("events", "list", "-c", str(log.config))

    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result.output
    assert len(lines) == 5
    assert "evt_1" in lines[0]
    assert "invoice.paid" in lines[0]


# events show


def test_show_by_key(log: Log) -> None:
    """events show KEY prints that entry as one JSON object."""
    result = invoke("events", "show", "-c", str(log.config), "evt_2")

    entry = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert entry.keys() >= ENTRY_KEYS
    assert entry["key"] == "evt_2"
    assert entry["offset"] == log.offsets["evt_2"]
    assert entry["payload"] == {"id": "evt_2"}


def test_show_by_offset(log: Log) -> None:
    """events show OFFSET prints the entry with that offset."""
    offset = log.offsets["evt_3"]

    result = invoke("events", "show", "-c", str(log.config), str(offset))

    entry = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert entry["key"] == "evt_3"
    assert entry["offset"] == offset


def test_show_keeps_non_ascii(log: Log) -> None:
    """events show prints non-ASCII text as is and big integers exactly."""
    result = invoke("events", "show", "-c", str(log.config), "evt_1")

    assert "Zoë" in result.stdout
    assert "1180591620717411303424" in result.stdout


def test_show_missing(log: Log) -> None:
    """events show for an unknown reference exits 1 and names it."""
    result = invoke("events", "show", "-c", str(log.config), "evt_404")

    assert result.exit_code == 1
    assert "evt_404" in result.stderr


def test_show_provider_option(log: Log, tmp_path: Path) -> None:
    """--provider picks one entry when two providers share the key."""
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    try:
        with store.session() as session:
            record = make_record("evt_2", "orders.create")
            record_events(session, "shop", "poll", [record], T0)
    finally:
        store.dispose()

    args = ("events", "show", "-c", str(log.config), "evt_2", "--provider", "shop")
    result = invoke(*args)

    entry = json.loads(result.stdout)
    assert result.exit_code == 0, result.output
    assert entry["provider"] == "shop"
    assert entry["type"] == "orders.create"


def test_show_ambiguous_key(log: Log, tmp_path: Path) -> None:
    """A key logged by two providers exits 1 naming both, not two documents."""
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    try:
        with store.session() as session:
            record = make_record("evt_2", "orders.create")
            record_events(session, "shop", "poll", [record], T0)
    finally:
        store.dispose()

    result = invoke("events", "show", "-c", str(log.config), "evt_2")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "2 log entries match 'evt_2'" in result.stderr
    assert "payments evt_2" in result.stderr
    assert "shop evt_2" in result.stderr
    assert "--provider" in result.stderr


def test_list_unknown_provider_warns(log: Log) -> None:
    """A --provider the configuration does not define gets a warning."""
    result = invoke("events", "list", "-c", str(log.config), "--provider", "nosuch")

    assert result.exit_code == 0
    assert "no provider 'nosuch' in the configuration" in result.stderr
    assert "configured: payments, shop" in result.stderr


# events tail


def test_tail_after(log: Log) -> None:
    """events tail --after N prints later entries as one JSON object per line."""
    after = log.offsets["evt_2"]

    result = invoke("events", "tail", "-c", str(log.config), "--after", str(after))

    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0, result.output
    assert keys_of(entries) == ["evt_3", "evt_4", "order_1"]
    for entry in entries:
        assert entry.keys() >= ENTRY_KEYS
        assert entry["offset"] > after


def test_tail_from_start(log: Log) -> None:
    """events tail without --after prints every entry once."""
    result = invoke("events", "tail", "-c", str(log.config))

    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result.output
    assert len(lines) == 5
    assert json.loads(lines[0])["payload"]["big"] == 2**70


def test_tail_filter_provider(log: Log) -> None:
    """events tail applies --provider like events list."""
    result = invoke("events", "tail", "-c", str(log.config), "--provider", "shop")

    entries = [json.loads(line) for line in result.stdout.splitlines()]
    assert keys_of(entries) == ["order_1"]


# status


def status_json(log: Log) -> dict[str, dict[str, Any]]:
    """Run ``status --json`` and return its provider items by name."""
    result = invoke("status", "-c", str(log.config), "--json")
    assert result.exit_code == 0, result.output
    return {item["name"]: item for item in json.loads(result.stdout)["providers"]}


def test_status_json_providers(log: Log) -> None:
    """status --json has one item per provider with its mode."""
    statuses = status_json(log)

    assert sorted(statuses) == ["payments", "shop"]
    assert statuses["payments"]["mode"] == "webhooks+reconcile"
    assert statuses["shop"]["mode"] == "polling"


def test_status_json_counts(log: Log) -> None:
    """status --json counts entries by first source and arrivals by source."""
    payments = status_json(log)["payments"]

    assert payments["events_by_source"] == {"webhook": 2, "poll": 1, "reconcile": 1}
    assert payments["received_by_source"] == {"webhook": 2, "poll": 2, "reconcile": 1}
    assert payments["duplicates_by_source"] == {"webhook": 0, "poll": 1, "reconcile": 0}
    assert payments["missed_webhooks_recovered"] == 1


def test_status_json_last_webhook_and_cursor(log: Log) -> None:
    """status --json shows the last webhook time and the saved cursors."""
    statuses = status_json(log)

    assert statuses["payments"]["last_webhook"] == "2024-05-01T10:00:00.123456Z"
    assert statuses["payments"]["cursors"] == {
        "events": {"high_water": "2024-05-01T10:00Z"}
    }
    assert statuses["shop"]["last_webhook"] is None


def test_status_hides_secrets(log: Log) -> None:
    """Neither form of status output contains a secret from the configuration."""
    for args in (("--json",), ()):
        result = invoke("status", "-c", str(log.config), *args)
        assert result.exit_code == 0, result.output
        assert API_TOKEN not in result.output
        assert WEBHOOK_SECRET not in result.output


# status figures measured from the time of the command


@dataclass
class RecentLog:
    """A configuration whose log was written relative to ``now``."""

    config: Path
    now: datetime
    high_water: datetime
    blocked_until: datetime


RECENT_CONFIG = """
[daemon]
database = "sqlite:///DIRECTORY/syncd.db"

[providers.payments]
connector = "stripe"
api_token = "sk_test_x"
webhook_secret = "whsec_x"

[providers.shop]
connector = "stripe"
api_token = "sk_test_x"

[sinks.archive]
kind = "jsonl"
path = "DIRECTORY/archive.jsonl"
"""


def write_recent_config(directory: Path) -> Path:
    path = directory / "config.toml"
    path.write_text(RECENT_CONFIG.replace("DIRECTORY", str(directory)))
    return path


def record_at(store: Store, provider: str, source: str, keys: str, seen_at: datetime):
    with store.session() as session:
        records = [make_record(key, "invoice.paid") for key in keys.split()]
        record_events(session, provider, source, records, seen_at)


@pytest.fixture
def recent(tmp_path: Path) -> Iterator[RecentLog]:
    """Return a log with entries, runs, a cursor, a gap and a rate limit.

    payments (webhooks): webhook entries 10 minutes (2) and 5 hours (1) old,
    reconcile entries 30 minutes, 90 minutes and 25 hours old, so that each
    window's edge lies between two entries. shop (polling): one
    poll entry 2 hours old, a cursor 7.5 minutes behind, a failed poll, an
    open gap and a rate-limit wait. Every entry is pending for the sink.
    """
    config = write_recent_config(tmp_path)
    now = datetime.now(UTC)
    high_water = now - timedelta(minutes=7, seconds=30)
    blocked_until = now + timedelta(minutes=20)
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    store.sink_routes = [SinkRoute("archive", (), ())]
    try:
        record_at(store, "payments", "webhook", "w3", now - timedelta(hours=5))
        record_at(store, "payments", "webhook", "w1 w2", now - timedelta(minutes=10))
        record_at(store, "payments", "reconcile", "r1", now - timedelta(minutes=30))
        record_at(store, "payments", "reconcile", "r2", now - timedelta(minutes=90))
        record_at(store, "payments", "reconcile", "r3", now - timedelta(hours=25))
        record_at(store, "shop", "poll", "p1", now - timedelta(hours=2))
        with store.session() as session:
            session.add(
                Run(
                    provider="payments",
                    kind="reconcile",
                    trigger="schedule",
                    status="ok",
                    started_at=now - timedelta(minutes=20),
                    listed=30,
                    new=1,
                )
            )
            session.add(
                Run(
                    provider="shop",
                    kind="poll",
                    trigger="schedule",
                    status="failed",
                    started_at=now - timedelta(minutes=1),
                    error="GET http://127.0.0.1:9/v1/events returned 500",
                )
            )
            save_cursor(
                session, "shop", "events", {"high_water": to_utc_iso(high_water)}, now
            )
            save_rate_limit(session, "shop", rate_limit_state(now, blocked_until), now)
        notice = GapNotice(
            "events", T0, T0 + timedelta(days=1), "older than the retention", False
        )
        record_gap(store, "shop", notice, now)
    finally:
        store.dispose()
    yield RecentLog(config, now, high_water, blocked_until)


def rate_limit_state(now: datetime, blocked_until: datetime) -> dict[str, Any]:
    return {
        "observed_at": to_utc_iso(now - timedelta(minutes=1)),
        "remaining": 0,
        "limit": 5000,
        "reset_at": to_utc_iso(blocked_until),
        "blocked_until": to_utc_iso(blocked_until),
        "reason": "X-RateLimit-Remaining is 0",
    }


def recent_json(recent: RecentLog) -> dict[str, Any]:
    result = invoke("status", "-c", str(recent.config), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def recent_providers(recent: RecentLog) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in recent_json(recent)["providers"]}


def test_status_json_recent_counts(recent: RecentLog) -> None:
    """Entries are counted by first source over the last hour and day."""
    payments = recent_providers(recent)["payments"]

    assert payments["events_last_hour"] == {"webhook": 2, "poll": 0, "reconcile": 1}
    assert payments["events_last_day"] == {"webhook": 3, "poll": 0, "reconcile": 2}
    assert payments["events_logged"] == 6


def test_status_json_recent_counts_per_provider(recent: RecentLog) -> None:
    """Each provider counts only its own entries."""
    shop = recent_providers(recent)["shop"]

    assert shop["events_last_hour"] == {"webhook": 0, "poll": 0, "reconcile": 0}
    assert shop["events_last_day"] == {"webhook": 0, "poll": 1, "reconcile": 0}


def test_status_json_missed_webhook_rate(recent: RecentLog) -> None:
    """The missed-webhook rate is reconcile entries over all entries logged."""
    statuses = recent_providers(recent)

    assert statuses["payments"]["missed_webhooks_recovered"] == 3
    assert statuses["payments"]["missed_webhook_rate"] == pytest.approx(3 / 6)
    assert statuses["shop"]["missed_webhook_rate"] is None


def test_status_json_cursor_lag(recent: RecentLog) -> None:
    """A cursor's lag is the status time minus its high-water mark."""
    before = datetime.now(UTC)
    data = recent_json(recent)
    after = datetime.now(UTC)

    shop = {item["name"]: item for item in data["providers"]}["shop"]
    lag = shop["cursor_lag_seconds"]["events"]
    generated_at = parse_time(data["generated_at"])
    assert before <= generated_at <= after
    assert lag == pytest.approx((generated_at - recent.high_water).total_seconds())
    assert (before - recent.high_water).total_seconds() <= lag
    assert lag <= (after - recent.high_water).total_seconds()


def test_status_json_rate_limit(recent: RecentLog) -> None:
    """The saved rate-limit state is shown as saved, apart from the cursors."""
    shop = recent_providers(recent)["shop"]

    assert shop["rate_limit"] == rate_limit_state(recent.now, recent.blocked_until)
    assert list(shop["cursors"]) == ["events"]
    assert recent_providers(recent)["payments"]["rate_limit"] is None


def test_status_json_runs_and_gaps(recent: RecentLog) -> None:
    """Last runs and open gaps keep their documented keys."""
    statuses = recent_providers(recent)

    last_reconcile = statuses["payments"]["last_reconcile"]
    assert last_reconcile["status"] == "ok"
    assert last_reconcile["listed"] == 30
    assert last_reconcile["new"] == 1
    assert statuses["shop"]["last_poll"]["status"] == "failed"
    assert [gap["listing"] for gap in statuses["shop"]["open_gaps"]] == ["events"]


def test_status_json_sink(recent: RecentLog) -> None:
    """The sink item counts every entry as pending."""
    (sink,) = recent_json(recent)["sinks"]

    assert sink["name"] == "archive"
    assert sink["kind"] == "jsonl"
    assert sink["backlog"] == 7
    assert sink["dead"] == 0


def recent_table(recent: RecentLog, **env: str) -> str:
    result = CliRunner().invoke(
        main,
        ["status", "-c", str(recent.config)],
        prog_name="syncd",
        env={"SYNCD_CONFIG": None, **env},
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def row_of(table: str, name: str) -> str:
    """Return the first line of the table row that starts with ``name``."""
    (line,) = [line for line in table.splitlines() if line.startswith(f"| {name} ")]
    return line


def test_status_table_provider_rows(recent: RecentLog) -> None:
    """Piped status has one row per provider with its mode and figures."""
    table = recent_table(recent)

    payments, shop = row_of(table, "payments"), row_of(table, "shop")
    assert "webhooks+reconcile" in payments
    assert "10m ago" in payments
    assert "ok 20m ago" in payments
    assert "webhook 2 / 3" in payments
    assert "3 of 6 (50.0%)" in payments
    assert "polling" in shop
    assert "failed 1m ago" in shop
    assert "events 7m" in shop
    assert "waiting 19m" in shop or "waiting 20m" in shop


def test_status_table_cell_lines(recent: RecentLog) -> None:
    """Second lines of cells contain the run counts and the other sources."""
    table = recent_table(recent)

    assert "listed 30, new 1" in table
    assert "reconcile 1 / 2" in table
    assert "0 of 5000 left" in table


def test_status_table_sinks(recent: RecentLog) -> None:
    """The sink table has the sink's kind, backlog and dead count."""
    row = row_of(recent_table(recent), "archive")

    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:3] == ["archive", "jsonl", "7"]
    assert cells[4:] == ["0", "0"]


def test_status_table_notes(recent: RecentLog) -> None:
    """Waits, failed runs and gaps are listed below the tables."""
    lines = recent_table(recent).splitlines()

    until = to_utc_iso(recent.blocked_until)
    assert f"shop: rate limited until {until} (X-RateLimit-Remaining is 0)" in lines
    failed = "shop: last poll failed: GET http://127.0.0.1:9/v1/events returned 500"
    assert failed in lines
    assert any(line.startswith("shop: GAP events: 2024-05-01T") for line in lines)


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "1"}])
def test_status_piped_has_no_escape_codes(
    recent: RecentLog, env: dict[str, str]
) -> None:
    """Piped status is plain text, even where rich would force colour."""
    table = recent_table(recent, **env)

    assert "\x1b" not in table
    assert "payments" in table
    for line in table.splitlines():
        assert line == line.rstrip()


def status_on_terminal(config: Path, **env: str) -> str:
    """Run ``syncd status`` with its output on a pseudo-terminal and return it."""
    controller, terminal = pty.openpty()
    environment = {**os.environ, "COLUMNS": "250", **env}
    environment.pop("SYNCD_CONFIG", None)
    command = [sys.executable, "-c", "from syncd.cli import main; main()"]
    process = subprocess.Popen(
        [*command, "status", "-c", str(config)],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    os.close(terminal)
    chunks = []
    with os.fdopen(controller, "rb", buffering=0) as output:
        while True:
            try:
                chunk = output.read(65536)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_status_terminal_has_colour(recent: RecentLog) -> None:
    """status on a terminal styles its output."""
    table = status_on_terminal(recent.config, NO_COLOR="")

    assert "\x1b[" in table


def test_status_terminal_no_color(recent: RecentLog) -> None:
    """status on a terminal with NO_COLOR set writes no escape codes at all."""
    table = status_on_terminal(recent.config, NO_COLOR="1")

    assert "\x1b[" not in table
    assert "payments" in table


def test_missing_database_directory_exits(tmp_path: Path) -> None:
    """A database in a missing directory is a configuration error naming it."""
    missing = tmp_path / "missing"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\ndatabase = "sqlite:///{missing / "syncd.db"}"\n', encoding="utf-8"
    )

    result = invoke("events", "list", "-c", str(config))

    assert result.exit_code == 78
    assert str(missing) in result.stderr


# Help


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[str]:
    """Return the space-separated path of every command under ``group``."""
    paths = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        paths.append(" ".join(path))
        if isinstance(command, click.Group):
            paths.extend(command_paths(command, path))
    return paths


def test_main_help() -> None:
    """syncd --help exits 0 and lists the documented commands."""
    result = invoke("--help")

    assert result.exit_code == 0, result.output
    for name in ("run", "reconcile", "events", "status", "check-config", "demo"):
        assert name in result.stdout


@pytest.mark.parametrize("path", command_paths(main))
def test_command_help(path: str) -> None:
    """Each command's --help exits 0 and prints its usage line."""
    result = invoke(*path.split(), "--help")

    assert result.exit_code == 0, result.output
    assert f"Usage: syncd {path}" in result.stdout


def test_lone_surrogate_payload_printed(tmp_path: Path) -> None:
    """A payload with an escaped lone surrogate prints as valid JSON."""
    config = write_config(tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    record = make_record("evt_s", "invoice.paid", '{"note": "\\ud800"}')
    with store.session() as session:
        record_events(session, "payments", "webhook", [record], T0)
    store.dispose()

    listed = invoke("events", "list", "-c", str(config), "--json")
    shown = invoke("events", "show", "evt_s", "-c", str(config))
    tailed = invoke("events", "tail", "-c", str(config))

    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)[0]["payload"]["note"] == "\ud800"
    assert shown.exit_code == 0, shown.output
    assert tailed.exit_code == 0, tailed.output


# reconcile


def test_reconcile_since_future_rejected(tmp_path: Path) -> None:
    """reconcile --since in the future exits 2 instead of an empty run."""
    config = write_config(tmp_path)

    result = invoke("reconcile", "-c", str(config), "--since", "2999-01-01T00:00:00Z")

    assert result.exit_code == 2
    assert "is in the future" in result.stderr


LOCAL_API = "http://127.0.0.1:9"


def write_local_config(directory: Path) -> Path:
    """Write a configuration with one provider whose API is on loopback."""
    path = directory / "config.toml"
    path.write_text(
        f'[daemon]\ndatabase = "sqlite:///{directory / "syncd.db"}"\n\n'
        '[providers.shop]\nconnector = "stripe"\n'
        f'api_token = "{API_TOKEN}"\napi_base_url = "{LOCAL_API}"\n',
        encoding="utf-8",
    )
    return path


def test_reconcile_warns_run_end_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile whose run end meets an outage warns that the run stays running."""
    config = write_local_config(tmp_path)

    def store_down(*args: object) -> None:
        raise StoreUnavailableError("connection refused (test outage)")

    monkeypatch.setattr(ProviderRunner, "_write_run_end", store_down)
    monkeypatch.setattr(cli, "RUN_END_TIMEOUT", 0.1)
    empty = {"object": "list", "data": [], "has_more": False}
    with respx.mock() as mock:
        mock.get(f"{LOCAL_API}/v1/events").mock(
            return_value=httpx.Response(200, json=empty)
        )
        result = invoke("reconcile", "-c", str(config))

    assert result.exit_code == 0, result.output
    assert "warning: the end of reconcile run 1 of shop was not recorded" in (
        result.stderr
    )
    assert "shows it as running" in result.stderr


def test_reconcile_sigterm_recorded_stopped(tmp_path: Path) -> None:
    """SIGTERM during a reconcile records its run as stopped, not running."""
    config = write_local_config(tmp_path)

    def terminate(request: httpx.Request) -> httpx.Response:
        os.kill(os.getpid(), signal.SIGTERM)
        return httpx.Response(200, json={"object": "list", "data": []})

    before = signal.getsignal(signal.SIGTERM)
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{LOCAL_API}/v1/events").mock(side_effect=terminate)
        result = invoke("reconcile", "-c", str(config))
    store = Store(f"sqlite:///{tmp_path / 'syncd.db'}")
    with store.session() as session:
        (run,) = session.query(Run).all()
    store.dispose()

    assert result.exit_code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM: the pages stored so far are kept" in result.stderr
    assert run.status == "stopped"
    assert run.error == "interrupted (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before


def test_first_reconcile_explains_empty_window(tmp_path: Path) -> None:
    """A first reconcile under start_from "now" prints how to list older events."""
    config = write_local_config(tmp_path)
    empty = {"object": "list", "data": [], "has_more": False}

    with respx.mock() as mock:
        mock.get(f"{LOCAL_API}/v1/events").mock(
            return_value=httpx.Response(200, json=empty)
        )
        result = invoke("reconcile", "-c", str(config))
        later = invoke("reconcile", "-c", str(config), "--since", "2h")

    assert result.exit_code == 0, result.output
    assert 'because start_from is "now"; pass --since' in result.stdout
    assert later.exit_code == 0, later.output
    assert "start_from" not in later.stdout


@pytest.mark.parametrize("command", ["list", "tail"])
@pytest.mark.parametrize("after", ["abc", "1.5", ""])
def test_after_not_integer_rejected(tmp_path: Path, command: str, after: str) -> None:
    """--after that is not an integer is a usage error saying so, with the range."""
    config = tmp_path / "missing.toml"
    result = invoke("events", command, "-c", str(config), "--after", after)

    assert result.exit_code == 2, result.output
    assert "'--after'" in result.stderr
    assert f"{after!r} is not an integer" in result.stderr
    assert OFFSET_RANGE in result.stderr
    assert "integer range" not in result.stderr


def test_limit_not_integer_rejected(tmp_path: Path) -> None:
    """--limit that is not an integer is a usage error saying so, with the range."""
    config = tmp_path / "missing.toml"
    result = invoke("events", "list", "-c", str(config), "--limit", "ten")

    assert result.exit_code == 2, result.output
    assert "'--limit'" in result.stderr
    assert "'ten' is not an integer" in result.stderr
    assert "1<=x<=9223372036854775807" in result.stderr


def test_later_reconcile_keeps_start_from_now(tmp_path: Path) -> None:
    """Under start_from "now", a later reconcile also lists nothing older."""
    config = write_local_config(tmp_path)
    empty = {"object": "list", "data": [], "has_more": False}

    with respx.mock() as mock:
        route = mock.get(f"{LOCAL_API}/v1/events").mock(
            return_value=httpx.Response(200, json=empty)
        )
        first = invoke("reconcile", "-c", str(config))
        second = invoke("reconcile", "-c", str(config))

    starts = [int(call.request.url.params["created[gte]"]) for call in route.calls]
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert len(starts) == 2
    assert starts[1] == starts[0]
