"""The ``syncd`` command line: parsing and printing only."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import httpx

from syncd import __version__, logs, queries
from syncd import config as config_module
from syncd.cli_db import register as register_db
from syncd.cli_deliveries import register as register_deliveries
from syncd.cli_service import systemd_unit
from syncd.cli_types import OFFSET, bigint_range
from syncd.errors import (
    EXIT_CONFIG,
    ConfigError,
    ListenError,
    StoreUnavailableError,
)
from syncd.file_checks import configured_file_problems, database_location_problem
from syncd.polling import RunReport
from syncd.runtime import Runtime
from syncd.store import Store
from syncd.units import parse_time, to_utc_iso

if TYPE_CHECKING:
    from syncd.reconcile import ProviderRunner

CONFIG_HELP = (
    "Configuration file [default: $SYNCD_CONFIG, then /etc/syncd/config.toml]."
)


def _config_option(function: Any) -> Any:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help=CONFIG_HELP,
    )(function)


def _json_option(function: Any) -> Any:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON."
    )(function)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load_config(
    path: str | None, *, require_secrets: bool = True
) -> config_module.Config:
    try:
        return config_module.load(path, require_secrets=require_secrets)
    except ConfigError as exc:
        _config_problems(exc)


def _config_problems(exc: ConfigError) -> NoReturn:
    click.echo("error: invalid configuration:", err=True)
    for problem in exc.problems:
        click.echo(f"  - {problem}", err=True)
    sys.exit(EXIT_CONFIG)


def _open(path: str | None, *, store_only: bool = False) -> Runtime:
    """Open the runtime of a command; it is closed when the command ends.

    ``store_only`` is for commands that work on the store alone, such as an
    operator's ``syncd status`` or ``syncd deliveries retry`` from a shell
    without the service's secrets. Secrets that are not available are left
    unset, and no connector is built because connectors may need them, so
    ``runtime.connectors`` is empty.
    """
    config = _load_config(path, require_secrets=not store_only)
    if store_only:
        _check_database_exists(config.daemon.sqlite_path)
    try:
        if store_only:
            runtime = Runtime(config, Store(config.daemon.database), connectors={})
        else:
            runtime = Runtime.open(config)
    except ConfigError as exc:
        _config_problems(exc)
    except StoreUnavailableError as exc:
        _fail(str(exc))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(runtime.close)
    return runtime


def _check_database_exists(sqlite_path: str | None) -> None:
    """Exit 78 when the SQLite database file is missing or cannot be at its path.

    Only ``syncd run``, ``reconcile`` and ``db upgrade`` create the database,
    so a mistyped path in a reading command is reported, not hidden.
    """
    if sqlite_path is None:
        return
    problem = database_location_problem(sqlite_path)
    if problem is None and not Path(sqlite_path).exists():
        problem = (
            f"daemon.database: file {sqlite_path} not found; check the path, or "
            "start syncd run once to create the database"
        )
    if problem is not None:
        _config_problems(ConfigError([problem]))


def _dump_text(value: Any, indent: int | None = None) -> str:
    """Return JSON with non-ASCII text as is, or escaped when it is not valid UTF-8.

    A payload may hold an escaped lone surrogate (``\\ud800``), which has no
    UTF-8 form; ASCII escapes print it unchanged in meaning.
    """
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, indent=indent)
    return text


def _when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="syncd")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Lowest level of log records written to standard error.",
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="Log line format: text, or one JSON object per line.",
)
def main(log_level: str, log_format: str) -> None:
    """Keep one deduplicated log of provider events from webhooks and polling."""
    logs.configure(log_level, log_format)


@main.command()
@_config_option
def run(config_path: str | None) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    Serves webhooks on [daemon] listen, polls providers without webhooks every
    poll_interval, and reconciles the others every reconcile_interval. Under
    systemd socket activation (LISTEN_FDS) it serves the passed socket instead.
    """
    from syncd.daemon import Daemon
    from syncd.systemd import listen_sockets

    runtime = _open(config_path)
    warnings = [
        config_module.warn_if_world_readable(runtime.config),
        *config_module.missing_token_warnings(runtime.config),
    ]
    for text in filter(None, warnings):
        click.echo(f"warning: {text}", err=True)
    sockets = listen_sockets()
    if len(sockets) > 1:
        _fail(f"systemd passed {len(sockets)} sockets; syncd serves exactly one")
    try:
        Daemon(runtime, sock=sockets[0] if sockets else None).run()
    except ListenError as exc:
        _fail(str(exc))


@main.command()
@_config_option
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help="Reconcile only this provider (repeatable) [default: all].",
)
@click.option(
    "--since",
    metavar="WHEN",
    help="Start of the window: ISO 8601 time or a duration ago such as "
    "'6h' [default: reconcile_window ago, or the end of the last "
    "reconcile].",
)
@click.option(
    "--until",
    metavar="WHEN",
    help="End of the window: ISO 8601 time or a duration ago [default: now].",
)
@click.option("--dry-run", is_flag=True, help="List and compare, but store nothing.")
@_json_option
def reconcile(
    config_path: str | None,
    providers: tuple[str, ...],
    since: str | None,
    until: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Backfill now: list each provider's window and add what the log lacks.

    Prints a report per provider and exits 1 if any provider failed. Safe to
    run while the daemon runs.
    """
    runtime = _open(config_path)
    unknown = sorted(set(providers) - set(runtime.connectors))
    if unknown:
        _fail(
            f"unknown provider(s) {', '.join(unknown)}; configured: "
            f"{', '.join(sorted(runtime.connectors)) or 'none'}",
            2,
        )
    start, end = _when(since, "--since"), _when(until, "--until")
    if start is not None and end is not None and start >= end:
        raise click.BadParameter(
            f"--since {since} is not before --until {until}; swap them",
            param_hint="--since",
        )
    if start is not None and end is None and start >= datetime.now(UTC):
        raise click.BadParameter(
            f"{since} is in the future, so the window would be empty; give a "
            "past time or a duration ago such as '6h'",
            param_hint="--since",
        )
    # SIGTERM ends the run as Ctrl-C does, so that it is recorded as stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        reports = _reconcile_providers(runtime, providers, start, end, dry_run)
    except KeyboardInterrupt as exc:
        name = str(exc) or "SIGINT"
        click.echo(
            f"stopped by {name}: the pages stored so far are kept, the run is "
            "recorded as stopped, and the next reconcile lists its window again",
            err=True,
        )
        sys.exit(128 + signal.Signals[name])
    finally:
        signal.signal(signal.SIGTERM, previous)
    _print_reports(reports, runtime, as_json, dry_run)
    if not all(report.ok for report in reports):
        sys.exit(1)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _reconcile_providers(
    runtime: Runtime,
    providers: tuple[str, ...],
    start: datetime | None,
    end: datetime | None,
    dry_run: bool,
) -> list[RunReport]:
    from syncd.reconcile import ProviderRunner

    reports = []
    with httpx.Client(headers={"User-Agent": f"syncd/{__version__}"}) as client:
        for name in providers or tuple(runtime.connectors):
            runner = ProviderRunner(runtime.store, runtime.connectors[name], client)
            reports.append(
                runner.reconcile(start, end, dry_run=dry_run, trigger="command")
            )
            _record_run_end(runner)
    return reports


# How long a one-shot reconcile retries recording its run's end in an outage.
RUN_END_TIMEOUT = 10.0


def _record_run_end(runner: ProviderRunner) -> None:
    """Record a run end that met a store outage, or warn that it stays running."""
    for record_id in runner.record_pending_ends(RUN_END_TIMEOUT):
        click.echo(
            f"warning: the end of reconcile run {record_id} of {runner.name} was "
            "not recorded because the event store is unavailable; syncd status "
            "shows it as running until it is pruned, and the next reconcile "
            "lists its window again",
            err=True,
        )


def _report_json(report: RunReport) -> dict[str, Any]:
    return {
        "provider": report.provider,
        "ok": report.ok,
        "error": report.error,
        "since": to_utc_iso(report.window.since) if report.window.since else None,
        "until": to_utc_iso(report.window.until) if report.window.until else None,
        "listed": report.listed,
        "already_in_log": report.already,
        "recovered": report.new,
        "requests": report.requests,
        "by_type": {k: asdict(v) for k, v in sorted(report.by_type.items())},
        "notes": report.notes,
    }


def _print_reports(
    reports: list[RunReport], runtime: Runtime, as_json: bool, dry_run: bool
) -> None:
    if as_json:
        click.echo(json.dumps([_report_json(r) for r in reports], indent=2))
        return
    verb = "would recover" if dry_run else "recovered"
    for report in reports:
        data = _report_json(report)
        click.echo(
            f"{report.provider}: {data['since'] or 'start'} to {data['until'] or 'now'}"
        )
        if not report.ok:
            click.echo(f"  FAILED: {report.error}")
            continue
        missed = runtime.connectors[report.provider].provider.webhooks_enabled
        label = f"{verb} (missed by webhooks)" if missed else f"{verb} (new)"
        click.echo(
            f"  listed {report.listed}, already in the log {report.already}, "
            f"{label} {report.new}"
        )
        for kind, counts in sorted(report.by_type.items()):
            click.echo(
                f"    {kind}: listed {counts.listed}, already {counts.already},"
                f" {verb} {counts.new}"
            )
        for note in report.notes:
            click.echo(f"  note: {note}")


@main.group()
def events() -> None:
    """Read the event log."""


def _filter_options(function: Any) -> Any:
    options = [
        click.option(
            "--provider",
            "providers",
            multiple=True,
            metavar="NAME",
            help="Only this provider (repeatable).",
        ),
        click.option(
            "--type",
            "types",
            multiple=True,
            metavar="TYPE",
            help="Only this event type, or the types that match a shell-style "
            "pattern such as 'invoice.*' or 'charge.?ailed': * is any text, ? "
            "one character, [seq] one character in seq, [!seq] one not in seq, "
            "and case counts. Quote a pattern so that the shell does not expand "
            "it. Repeatable.",
        ),
        click.option(
            "--source",
            "sources",
            multiple=True,
            type=click.Choice(["webhook", "poll", "reconcile"]),
            help="Only entries first brought by this stream (repeatable).",
        ),
        click.option(
            "--after",
            type=OFFSET,
            default=0,
            metavar="OFFSET",
            help="Only entries after this offset.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@events.command("list")
@_config_option
@_filter_options
@click.option(
    "--limit",
    type=bigint_range(1),
    default=100,
    show_default=True,
    help="Maximum number of entries printed.",
)
@_json_option
def events_list(config_path, providers, types, sources, after, limit, as_json):
    """List log entries in offset order."""
    runtime = _open(config_path, store_only=True)
    _warn_unknown_providers(runtime, providers)
    rows = queries.list_events(
        runtime.store,
        providers=providers,
        types=types,
        sources=sources,
        after=after,
        limit=limit,
    )
    if as_json:
        click.echo(_dump_text([queries.event_to_json(e) for e in rows], indent=2))
        return
    for event in rows:
        click.echo(
            f"{event.offset:>8}  {to_utc_iso(event.occurred_at)}  "
            f"{event.provider:<12} {event.first_source:<9} {event.type:<32} "
            f"{event.key}"
        )


@events.command("show")
@_config_option
@click.argument("ref")
@click.option("--provider", help="Provider of the entry when the key is ambiguous.")
def events_show(config_path: str | None, ref: str, provider: str | None) -> None:
    """Print one entry, found by offset or dedup key, as JSON."""
    runtime = _open(config_path, store_only=True)
    _warn_unknown_providers(runtime, [provider] if provider else [])
    found = queries.find_event(runtime.store, ref, provider)
    if not found:
        _fail(f"no log entry with offset or key {ref!r}")
    if len(found) > 1:
        matches = ", ".join(
            f"offset {e.offset} ({e.provider} {e.key})" for e in found[:10]
        )
        _fail(
            f"{len(found)} log entries match {ref!r}: {matches}; "
            "add --provider NAME, or give the entry's offset"
        )
    click.echo(_dump_text(queries.event_to_json(found[0]), indent=2))


def _warn_unknown_providers(runtime: Runtime, names: Iterable[str]) -> None:
    _warn_unknown_names(
        "provider", names, runtime.config.providers, "entries in the log"
    )


def _warn_unknown_names(
    kind: str,
    names: Iterable[str],
    configured: Iterable[str],
    rows: str,
    action: str = "listed",
) -> None:
    """Warn about each name in ``names`` that is not in ``configured``.

    The rows of a provider or sink removed from the file stay in the store,
    so this only warns and the command still runs. ``kind`` and ``rows`` name
    the setting and its rows in the message, and ``action`` what the command
    does with them.
    """
    known = list(configured)
    for name in names:
        if name not in known:
            click.echo(
                f"warning: no {kind} {name!r} in the configuration "
                f"(configured: {', '.join(known) or 'none'}); its {rows} are "
                f"{action} if any remain",
                err=True,
            )


@events.command("tail")
@_config_option
@_filter_options
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between checks with --follow.",
)
def events_tail(config_path, providers, types, sources, after, follow, interval):
    """Print entries after OFFSET as JSON lines; resume with --after OFFSET."""
    runtime = _open(config_path, store_only=True)
    _warn_unknown_providers(runtime, providers)
    position = after
    while True:
        rows = queries.list_events(
            runtime.store,
            providers=providers,
            types=types,
            sources=sources,
            after=position,
            limit=1000,
        )
        for event in rows:
            click.echo(_dump_text(queries.event_to_json(event)))
            position = event.offset or position
        if not follow:
            return
        if not rows:
            time.sleep(interval)


@main.command()
@_config_option
@_json_option
def status(config_path: str | None, as_json: bool) -> None:
    """Show each provider's runs, cursors, recent events and rate limit.

    Per provider: mode, last webhook, last poll and reconcile, each cursor's
    lag, entries logged in the last hour and day by source, missed webhooks
    recovered, open gaps and the rate-limit state. Per sink: backlog, oldest
    pending age, dead and delivered rows. Needs no provider secrets.
    """
    runtime = _open(config_path, store_only=True)
    now = datetime.now(UTC)
    statuses = [
        queries.provider_status(runtime.store, name, provider.mode, now)
        for name, provider in runtime.config.providers.items()
    ]
    sinks = [
        queries.sink_status(runtime.store, name, sink.kind, now)
        for name, sink in runtime.config.sinks.items()
    ]
    if as_json:
        data = {
            "generated_at": to_utc_iso(now),
            "providers": [asdict(s) for s in statuses],
            "sinks": [asdict(s) for s in sinks],
        }
        click.echo(json.dumps(data, indent=2))
        return
    from syncd.status_view import render_status

    terminal = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if terminal else None
    text = render_status(statuses, sinks, now, terminal=terminal, width=width)
    click.echo(text, nl=False, color=terminal)


@main.command("check-config")
@_config_option
def check_config(config_path: str | None) -> None:
    """Validate the configuration; list every problem and exit 78 if any."""
    config = _load_config(config_path)
    problems, file_warnings = configured_file_problems(config)
    if problems:
        _config_problems(ConfigError(problems))
    warning = config_module.warn_if_world_readable(config)
    for text in filter(None, [warning, *file_warnings]):
        click.echo(f"warning: {text}", err=True)
    names = ", ".join(
        f"{n} ({p.connector}, {p.mode})" for n, p in config.providers.items()
    )
    for text in config_module.missing_token_warnings(config):
        click.echo(f"warning: {text}", err=True)
    if not config.providers:
        click.echo(
            "warning: no [providers.NAME] table, so syncd run would receive and "
            "poll nothing; see config.example.toml",
            err=True,
        )
    click.echo(f"{config.path}: valid; providers: {names or 'none'}")


@main.command()
@click.option(
    "--events",
    "count",
    type=click.IntRange(min=1, max=100_000),
    default=300,
    show_default=True,
    help="Events the provider emits.",
)
@click.option(
    "--drop",
    type=click.FloatRange(0, 0.9),
    default=0.25,
    show_default=True,
    help="Share of webhooks the provider drops.",
)
@click.option(
    "--repeat",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of webhooks sent more than once.",
)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Seed of the simulated provider's randomness.",
)
def demo(count: int, drop: float, repeat: float, seed: int) -> None:
    """Run a self-contained demo on loopback against a simulated provider.

    The provider drops and repeats webhooks; a reconcile recovers what was
    dropped. Exits 1 if any event is missing or duplicated in the log.
    """
    from syncd.demo import run_demo

    ok = run_demo(
        count=count, drop_rate=drop, repeat_rate=repeat, seed=seed, echo=click.echo
    )
    sys.exit(0 if ok else 1)


main.add_command(systemd_unit)
register_db(
    main,
    {"config": _config_option, "load": _load_config, "problems": _config_problems},
)
register_deliveries(
    main,
    {
        "config": _config_option,
        "json": _json_option,
        "open": _open,
        "when": _when,
        "warn_unknown": _warn_unknown_names,
    },
)


if __name__ == "__main__":
    main()
