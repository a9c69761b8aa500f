"""``syncd deliveries``: inspect, retry and replay sink deliveries."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from syncd import outbox, queries
from syncd.cli_types import ROW_ID, bigint_range
from syncd.models import Delivery, Event
from syncd.runtime import route_of
from syncd.store import Store


def register(main: click.Group, options: dict) -> None:
    """Add the ``deliveries`` group to the main command."""
    config_option, json_option, open_runtime, when, warn_unknown = (
        options["config"],
        options["json"],
        options["open"],
        options["when"],
        options["warn_unknown"],
    )

    @main.group()
    def deliveries() -> None:
        """Inspect, retry and replay deliveries to sinks."""

    @deliveries.command("list")
    @config_option
    @click.option(
        "--status",
        "statuses",
        multiple=True,
        type=click.Choice(["pending", "failed", "delivered", "dead"]),
        help="Only rows in this state (repeatable). 'failed' means pending "
        "with at least one failed attempt.",
    )
    @click.option(
        "--sink",
        "sinks",
        multiple=True,
        metavar="NAME",
        help="Only this sink (repeatable).",
    )
    @click.option(
        "--limit",
        type=bigint_range(1),
        default=100,
        show_default=True,
        help="Maximum number of rows printed.",
    )
    @json_option
    def list_command(config_path, statuses, sinks, limit, as_json):
        """List outbox rows, oldest first."""
        runtime = open_runtime(config_path, store_only=True)
        warn_unknown("sink", sinks, runtime.config.sinks, "deliveries")
        try:
            rows = _list_rows(runtime.store, statuses, sinks, limit)
        finally:
            runtime.close()
        items = [queries.delivery_to_json(d, e) for d, e in rows]
        if as_json:
            click.echo(json.dumps(items, indent=2))
            return
        for item in items:
            click.echo(
                f"{item['id']:>8}  {item['sink']:<12} {item['status']:<9} "
                f"attempts {item['attempts']:<3} {item['provider']}/{item['key']}"
                + (f"  ({item['last_error']})" if item["last_error"] else "")
            )

    @deliveries.command("retry")
    @config_option
    @click.argument("ids", nargs=-1, type=ROW_ID)
    @click.option("--dead", is_flag=True, help="Retry every dead delivery.")
    @click.option("--sink", help="With --dead, only this sink's.")
    @json_option
    def retry_command(config_path, ids, dead, sink, as_json):
        """Make the given deliveries (or every dead one) due now, attempts reset."""
        if not ids and not dead:
            raise click.UsageError("give delivery IDs or --dead")
        runtime = open_runtime(config_path, store_only=True)
        if sink:
            rows = "dead deliveries"
            warn_unknown("sink", (sink,), runtime.config.sinks, rows, "retried")
        try:
            with runtime.store.session() as session:
                count = outbox.retry(
                    session, ids, dead=dead, sink=sink, now=datetime.now(UTC)
                )
                problems = _not_retried(session, ids, dead=dead, sink=sink)
        finally:
            runtime.close()
        if as_json or count or not problems:
            # A text line of "0 due again" would only precede the errors.
            _report(as_json, {"retried": count}, f"{count} delivery(ies) due again")
        if problems:
            for problem in problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)

    @deliveries.command("replay")
    @config_option
    @click.option(
        "--sink", required=True, metavar="NAME", help="The sink to deliver to again."
    )
    @click.option(
        "--since",
        required=True,
        metavar="WHEN",
        help="Events first logged at or after this ISO 8601 time or "
        "duration ago, e.g. '2h'.",
    )
    @json_option
    def replay_command(config_path, sink, since, as_json):
        """Deliver logged events to a sink again, with the same idempotency keys.

        Events with no row for the sink yet (a sink added later) get one.
        """
        start = when(since, "--since")
        runtime = open_runtime(config_path, store_only=True)
        try:
            settings = runtime.config.sinks.get(sink)
            if settings is None:
                raise click.BadParameter(
                    f"no sink {sink!r}; configured: "
                    f"{', '.join(sorted(runtime.config.sinks)) or 'none'}",
                    param_hint="--sink",
                )
            with runtime.store.session() as session:
                count = outbox.replay(
                    session, route_of(settings), start, datetime.now(UTC)
                )
        finally:
            runtime.close()
        _report(as_json, {"replayed": count}, f"{count} event(s) due for {sink}")


def _report(as_json: bool, data: dict, text: str) -> None:
    click.echo(json.dumps(data) if as_json else text)


def _list_rows(
    store: Store, statuses: tuple[str, ...], sinks: tuple[str, ...], limit: int
) -> list[tuple[Delivery, Event]]:
    """Return outbox rows in the given states, oldest first.

    ``failed`` is a pending row with at least one attempt. It is selected in
    SQL, so that ``--limit`` counts only matching rows.
    """
    statement = select(Delivery, Event).join(
        Event,
        Event.offset == Delivery.event_offset,  # type: ignore[arg-type]
    )
    states = []
    for status in set(statuses):
        if status == "failed":
            states.append(and_(Delivery.status == "pending", Delivery.attempts > 0))
        else:
            states.append(Delivery.status == status)
    if states:
        statement = statement.where(or_(*states))
    if sinks:
        statement = statement.where(Delivery.sink.in_(sinks))  # type: ignore
    statement = statement.order_by(Delivery.id).limit(limit)  # type: ignore[arg-type]
    with store.session() as session:
        return [(row[0], row[1]) for row in session.execute(statement).all()]


def _not_retried(
    session: Session, ids: tuple[int, ...], *, dead: bool, sink: str | None
) -> list[str]:
    """Explain each requested ID that retry left as it was."""
    if not ids:
        return []
    found = {
        row.id: row
        for row in session.execute(
            select(Delivery).where(Delivery.id.in_(ids))  # type: ignore[union-attr]
        ).scalars()
    }
    problems = []
    for delivery_id in sorted(set(ids)):
        row = found.get(delivery_id)
        if row is None:
            problems.append(f"delivery {delivery_id} not found")
        elif row.status == "delivered":
            problems.append(
                f"delivery {delivery_id} is already delivered; use "
                f"'syncd deliveries replay --sink {row.sink}' to deliver it again"
            )
        elif dead and row.status != "dead":
            problems.append(f"delivery {delivery_id} is {row.status}, not dead")
        elif sink and row.sink != sink:
            problems.append(f"delivery {delivery_id} belongs to sink {row.sink}")
    return problems
