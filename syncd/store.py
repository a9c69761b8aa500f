"""Database engine, sessions, and the insert-or-count write path of the log.

Deduplication is done by the database: one ``INSERT … ON CONFLICT (provider,
key) DO UPDATE`` per batch (per 100 rows on SQLite), which stores a new event
or counts a duplicate in one statement, so two concurrent deliveries of one
event cannot both insert. The statements are in :mod:`syncd.upsert`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from connectors.base import EventRecord
from syncd.errors import ConfigError, StoreUnavailableError
from syncd.file_checks import database_location_problem
from syncd.models import Cursor, Event
from syncd.outbox import SinkRoute, create_deliveries
from syncd.upsert import upsert_events

log = logging.getLogger(__name__)

SOURCES = ("webhook", "poll", "reconcile")

# Serialises writers on PostgreSQL so that offsets commit in increasing order
# and a reader following ``offset > last`` never skips a late commit.
_WRITE_LOCK_ID = 0x73796E6364


@dataclass
class WriteResult:
    """The result of one call of :func:`record_events`."""

    new: list[EventRecord] = field(default_factory=list)
    new_offsets: list[int] = field(default_factory=list)
    duplicates: list[EventRecord] = field(default_factory=list)


class Store:
    """The database behind the log: an engine and a session factory."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        # Sinks whose delivery rows record_events creates with each new event.
        self.sink_routes: list[SinkRoute] = []
        if create:
            try:
                self.create_schema()
            except StoreUnavailableError:
                self.engine.dispose()
                raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_schema(self) -> None:
        """Create or upgrade the schema to this version's newest revision."""
        from alembic.util.exc import CommandError

        from syncd.migrate import upgrade

        try:
            upgrade(self.engine)
        except CommandError as exc:
            raise StoreUnavailableError(
                f"cannot migrate the schema in {redact_url(self.url)}: {exc}; the "
                "database may have been upgraded by a newer syncd"
            ) from exc
        except SQLAlchemyError as exc:
            raise StoreUnavailableError(
                f"cannot create the schema in {redact_url(self.url)}: {exc}"
            ) from exc

    @contextmanager
    def session(self, connection: Connection | None = None) -> Iterator[Session]:
        """Open a session whose transaction commits on success.

        With ``connection`` (from :meth:`connection`) the transaction runs on
        it, and no connection is checked out of the pool. Database failures
        are raised as StoreUnavailableError.
        """
        try:
            bind = self.engine if connection is None else connection
            with Session(bind, expire_on_commit=False) as session:
                session.info["sink_routes"] = self.sink_routes
                with session.begin():
                    yield session
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"database error: {_short(exc)}") from exc

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Check out one connection for a series of transactions.

        A listing run commits each page on it, which saves a pool checkout per
        page, and on PostgreSQL the round trip of its ``pool_pre_ping``.
        Database failures are raised as StoreUnavailableError.
        """
        try:
            with self.engine.connect() as connection:
                yield connection
        except (DBAPIError, OSError) as exc:
            raise StoreUnavailableError(f"database error: {_short(exc)}") from exc

    def ping(self) -> None:
        """Run a trivial query; raise StoreUnavailableError if it fails."""
        with self.session() as session:
            session.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    """Create the engine: SQLite in WAL mode, or PostgreSQL through psycopg 3."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:"):
        _check_sqlite_directory(url)
        engine = create_engine(url, connect_args={"timeout": 5})
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _check_sqlite_directory(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    problem = database_location_problem(path)
    if problem is not None:
        raise ConfigError([problem])


def _configure_sqlite(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def record_events(
    session: Session,
    provider: str,
    source: str,
    records: Sequence[EventRecord],
    seen_at: datetime,
) -> WriteResult:
    """Store new events and count duplicates, inside the caller's transaction.

    A record whose (provider, key) is already in the log is not stored again:
    its ``duplicates`` goes up by one and the stream's first-seen time is
    filled in if this stream had not seen it yet. Each new event gets its
    outbox rows for the sinks in ``session.info["sink_routes"]`` (set by
    :meth:`Store.session`) in the same transaction.
    """
    result = WriteResult()
    unique: dict[str, EventRecord] = {}
    for record in records:
        if record.key in unique:
            result.duplicates.append(record)
        else:
            unique[record.key] = record
    if not unique:
        return result

    dialect = session.get_bind().dialect.name
    _take_write_lock(session, dialect)
    # Rows are matched by key, not by position, so the RETURNING rows may
    # come in any order.
    connection = session.connection()
    returned = upsert_events(
        connection, provider, source, list(unique.values()), len(records), seen_at
    )
    for record in unique.values():
        offset, duplicates = returned[record.key]
        if duplicates == 0:
            result.new.append(record)
            result.new_offsets.append(offset)
        else:
            result.duplicates.append(record)
    if len(unique) < len(records):
        _count_batch_repeats(session, provider, records)
    routes = session.info.get("sink_routes")
    if routes and result.new:
        new = zip(result.new_offsets, result.new, strict=True)
        create_deliveries(
            session,
            routes,
            provider,
            [(offset, r.type, r.resource) for offset, r in new],
            seen_at,
        )
    return result


def _count_batch_repeats(
    session: Session, provider: str, records: Sequence[EventRecord]
) -> None:
    """Add the repeats of a key inside one batch to its duplicates column."""
    repeats = Counter(record.key for record in records)
    for key, count in repeats.items():
        if count > 1:
            session.execute(
                update(Event)
                .where(Event.provider == provider, Event.key == key)
                .values(duplicates=Event.duplicates + (count - 1))
            )


@functools.cache
def _write_lock(dialect: str) -> Any:
    return select(func.pg_advisory_xact_lock(_WRITE_LOCK_ID))


def _take_write_lock(session: Session, dialect: str) -> None:
    if dialect == "postgresql":
        session.execute(_write_lock(dialect))


def load_cursor(session: Session, provider: str, listing: str) -> dict[str, Any]:
    """Return the stored cursor state of a listing, or an empty dict."""
    row = session.get(Cursor, (provider, listing))
    return json.loads(row.state) if row is not None else {}


def save_cursor(
    session: Session,
    provider: str,
    listing: str,
    state: dict[str, Any],
    now: datetime,
) -> None:
    """Store a listing's cursor state inside the caller's transaction."""
    row = session.get(Cursor, (provider, listing))
    if row is None:
        row = Cursor(provider=provider, listing=listing, state="{}", updated_at=now)
        session.add(row)
    row.state = json.dumps(state, sort_keys=True)
    row.updated_at = now


def redact_url(url: str) -> str:
    """Return a database URL with any password replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown cut short
        return url.split("@")[-1]


def _short(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0][:300]
