"""Schema migrations: a database of the first revision upgrades intact."""

from __future__ import annotations

from datetime import UTC, datetime

from click.testing import CliRunner
from sqlalchemy import create_engine, select, text
from sqlmodel import SQLModel

from syncd.cli import main
from syncd.migrate import BASELINE, current_revision, head_revision, upgrade
from syncd.models import Cursor, Delivery, Event
from syncd.store import Store, make_engine

T0 = "2024-05-01 10:00:00"


def _fill_first_schema(engine) -> None:
    """Insert one event, cursor and delivery in the columns of the first schema."""
    with engine.begin() as connection:
        connection.execute(
            text(
                'INSERT INTO events ("offset", provider, key, type, occurred_at, '
                "first_seen_at, first_source, duplicates, payload) VALUES "
                "(1, 'payments', 'evt_1', 'invoice.paid', :t, :t, 'webhook', 0, "
                '\'{"id": "evt_1", "n": 820982911946154508}\')'
            ),
            {"t": T0},
        )
        connection.execute(
            text(
                "INSERT INTO cursors (provider, listing, state, updated_at) VALUES "
                "('payments', 'events', "
                "'{\"high_water\": \"2024-05-01T10:00:00Z\"}', :t)"
            ),
            {"t": T0},
        )
        connection.execute(
            text(
                "INSERT INTO deliveries (id, event_offset, sink, status, attempts, "
                "created_at, next_attempt_at) "
                "VALUES (1, 1, 'app', 'pending', 2, :t, :t)"
            ),
            {"t": T0},
        )


def test_first_revision_upgrades_intact(database_url):
    """Events, cursors and deliveries written at the first revision survive."""
    engine = make_engine(database_url)
    upgrade(engine, BASELINE)
    _fill_first_schema(engine)
    engine.dispose()

    store = Store(database_url)

    assert current_revision(store.engine) == head_revision()
    with store.session() as session:
        event = session.execute(select(Event)).scalar_one()
        cursor = session.execute(select(Cursor)).scalar_one()
        delivery = session.execute(select(Delivery)).scalar_one()
    assert event.key == "evt_1"
    assert "820982911946154508" in event.payload
    assert event.occurred_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert "high_water" in cursor.state
    assert delivery.attempts == 2
    assert delivery.first_queued_at == delivery.created_at
    store.dispose()


def test_unversioned_database_stamped(tmp_path):
    """A database created before migrations existed is stamped, then upgraded."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    first = [t for t in SQLModel.metadata.sorted_tables]
    SQLModel.metadata.create_all(engine, tables=first)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE deliveries DROP COLUMN first_queued_at"))
    engine.dispose()

    store = Store(url)

    assert current_revision(store.engine) == head_revision()
    store.dispose()


def test_db_upgrade_command(tmp_path):
    """'syncd db upgrade' migrates the configured database and names the revision."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\ndatabase = "sqlite:///{tmp_path / "syncd.db"}"\n',
        encoding="utf-8",
    )

    result = CliRunner().invoke(main, ["db", "upgrade", "-c", str(config)])

    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
