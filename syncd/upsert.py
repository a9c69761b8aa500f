"""The write statements of the log's hot path, sent as driver SQL.

SQLAlchemy's compiled multi-row upsert builds every row's parameters in
Python and converts each of its three datetimes. On PostgreSQL its query
text for a page of 100 rows is also longer than psycopg caches, so psycopg
converts it again for every page. Here each SQL text is written once per
dialect, source and batch size, and only ``occurred_at`` is converted per
row. SQLite rows go out in chunks of a fixed size, so sqlite3 reuses its
prepared statement. PostgreSQL rows go out as one array per column, in a
statement whose text never changes. Statements still run through
SQLAlchemy's connection, so driver errors are wrapped as DBAPIError like
every other statement's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from connectors.base import EventRecord

# Rows per SQLite statement. 100 rows of 6 values, plus 5 shared ones, stay
# below SQLite's default limit of bound values: 999 before SQLite 3.32 and
# 32,766 since.
CHUNK_ROWS = 100

COLUMNS = (
    "provider",
    "key",
    "type",
    "occurred_at",
    "first_seen_at",
    "first_source",
    "webhook_seen_at",
    "poll_seen_at",
    "duplicates",
    "resource",
    "version",
    "payload",
)


def upsert_events(
    connection: Connection,
    provider: str,
    source: str,
    records: Sequence[EventRecord],
    received: int,
    seen_at: datetime,
) -> dict[str, tuple[int, int]]:
    """Insert new events, count repeats, and return (offset, duplicates) by key.

    ``records`` must have distinct keys. A key already in the log gets its
    ``duplicates`` raised by one and the stream's first-seen time filled in
    if that was still empty. ``duplicates`` is returned after the statement,
    so 0 means the event is new. The batch is also added to its
    ``source_stats`` row: ``received`` arrivals (the batch's size before
    repeated keys were removed), of which the repeats and the keys already
    in the log are duplicates.
    """
    dialect = connection.dialect.name
    to_db = _time_value(dialect)
    seen = to_db(seen_at)
    repeats = received - len(records)
    if dialect == "postgresql":
        arrivals = (provider, source, received, repeats, seen)
        rows = _upsert_postgresql(
            connection, provider, source, records, seen, to_db, arrivals
        )
    else:
        rows = _upsert_sqlite(connection, provider, source, records, seen, to_db)
        duplicates = repeats + sum(1 for row in rows if row[2] != 0)
        arrivals = (provider, source, received, duplicates, seen)
        connection.exec_driver_sql(_SQLITE_ARRIVALS, arrivals)
    return {key: (offset, duplicates) for key, offset, duplicates in rows}


def _upsert_sqlite(
    connection: Connection,
    provider: str,
    source: str,
    records: Sequence[EventRecord],
    seen: Any,
    to_db: Callable[[datetime], Any],
) -> list[Any]:
    """Send the rows as multi-row VALUES, CHUNK_ROWS rows per statement.

    The values that every row shares are bound once per statement.
    """
    webhook_seen = seen if source == "webhook" else None
    poll_seen = None if source == "webhook" else seen
    shared = (provider, seen, source, webhook_seen, poll_seen)
    returned: list[Any] = []
    for first in range(0, len(records), CHUNK_ROWS):
        chunk = records[first : first + CHUNK_ROWS]
        values: list[Any] = list(shared)
        for record in chunk:
            values += (
                record.key,
                record.type,
                to_db(record.occurred_at),
                record.resource,
                record.version,
                record.payload,
            )
        statement = sqlite_upsert_sql(source, len(chunk))
        returned += connection.exec_driver_sql(statement, tuple(values)).all()
    return returned


def _upsert_postgresql(
    connection: Connection,
    provider: str,
    source: str,
    records: Sequence[EventRecord],
    seen: Any,
    to_db: Callable[[datetime], Any],
    arrivals: tuple[Any, ...],
) -> list[Any]:
    """Send the rows as one array per column, in one short statement.

    The text stays the same for any batch size, so psycopg caches its
    conversion and prepares it on the server. ``%b`` sends the arrays in
    binary, which spares escaping the quotes of every payload. The same
    statement updates ``source_stats``, which saves a round trip.
    """
    webhook_seen = seen if source == "webhook" else None
    poll_seen = None if source == "webhook" else seen
    values = (
        provider,
        seen,
        source,
        webhook_seen,
        poll_seen,
        [record.key for record in records],
        [record.type for record in records],
        [to_db(record.occurred_at) for record in records],
        [record.resource for record in records],
        [record.version for record in records],
        [record.payload for record in records],
        *arrivals,
    )
    statement = postgresql_upsert_sql(source)
    return list(connection.exec_driver_sql(statement, values).all())


_SQLITE_ARRIVALS = (
    'INSERT INTO "source_stats" '
    '("provider", "source", "received", "duplicates", "last_at") '
    "VALUES (?, ?, ?, ?, ?) "
    'ON CONFLICT ("provider", "source") DO UPDATE SET '
    '"received" = "source_stats"."received" + excluded."received", '
    '"duplicates" = "source_stats"."duplicates" + excluded."duplicates", '
    '"last_at" = excluded."last_at"'
)


def _time_value(dialect: str) -> Callable[[datetime], Any]:
    """Return the function that turns an aware datetime into the driver's value.

    The values are those of the ``UTCDateTime`` column type: naive UTC text
    on SQLite, an aware UTC datetime on PostgreSQL.
    """
    return sqlite_time if dialect == "sqlite" else _utc


def sqlite_time(value: datetime) -> str:
    """Format an aware datetime as SQLAlchemy's SQLite DATETIME stores it.

    That is naive UTC as ``YYYY-MM-DD HH:MM:SS.ffffff``, microseconds always
    written, so that stored values compare correctly as text.
    """
    if value.tzinfo is UTC:  # the usual case, with no conversion to make
        return value.isoformat(" ", "microseconds")[:26]  # without "+00:00"
    return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}; syncd stores aware UTC")
    return value.astimezone(UTC)


def _conflict_clause(source: str) -> str:
    stream = '"webhook_seen_at"' if source == "webhook" else '"poll_seen_at"'
    return (
        'ON CONFLICT ("provider", "key") DO UPDATE SET '
        '"duplicates" = "events"."duplicates" + 1, '
        f'{stream} = coalesce("events".{stream}, excluded.{stream}) '
        'RETURNING "key", "offset", "duplicates"'
    )


_COLUMN_LIST = ", ".join(f'"{name}"' for name in COLUMNS)


@functools.cache
def sqlite_upsert_sql(source: str, rows: int) -> str:
    """Return the SQLite upsert of ``rows`` rows, with numbered parameters.

    Parameters 1 to 5 are the values every row shares: provider, seen time,
    source, webhook and poll seen times. Each row then has six of its own:
    key, type, occurred_at, resource, version and payload.
    """
    tuples = []
    for row in range(rows):
        first = 6 + 6 * row
        key, kind, occurred, resource, version, payload = range(first, first + 6)
        tuples.append(
            f"(?1, ?{key}, ?{kind}, ?{occurred}, ?2, ?3, ?4, ?5, 0, "
            f"?{resource}, ?{version}, ?{payload})"
        )
    values = ", ".join(tuples)
    return f'INSERT INTO "events" ({_COLUMN_LIST}) VALUES {values} ' + _conflict_clause(
        source
    )


@functools.cache
def postgresql_upsert_sql(source: str) -> str:
    """Return the PostgreSQL upsert of rows given as arrays, one per column.

    The parameters are provider, seen time, source, webhook and poll seen
    times (one of them NULL), then arrays of key, type, occurred_at,
    resource, version and payload, then the ``source_stats`` values:
    provider, source, arrivals, repeats inside the batch and seen time. The
    statement returns the key, offset and duplicates of each row.
    """
    return (
        "WITH ins AS ("
        f'INSERT INTO "events" ({_COLUMN_LIST}) '
        "SELECT %s, r.key, r.type, r.occurred_at, %s::timestamptz, %s, "
        "%s::timestamptz, %s::timestamptz, 0, r.resource, r.version, r.payload "
        "FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::text[], "
        "%b::text[], %b::text[]) "
        "AS r(key, type, occurred_at, resource, version, payload) "
        + _conflict_clause(source)
        + "), stats AS ("
        'INSERT INTO "source_stats" '
        '("provider", "source", "received", "duplicates", "last_at") '
        "SELECT %s, %s, %s, "
        '%s + count(*) FILTER (WHERE ins."duplicates" > 0), %s::timestamptz '
        "FROM ins "
        'ON CONFLICT ("provider", "source") DO UPDATE SET '
        '"received" = "source_stats"."received" + excluded."received", '
        '"duplicates" = "source_stats"."duplicates" + excluded."duplicates", '
        '"last_at" = excluded."last_at") '
        'SELECT "key", "offset", "duplicates" FROM ins'
    )
