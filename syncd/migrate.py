"""Schema migrations with Alembic, applied when a store is opened.

A database created before migrations existed has the first revision's tables
but no ``alembic_version`` table. It is stamped with that revision and then
upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, inspect, select

BASELINE = "0001"
SCRIPTS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x73796E6364 + 1  # PostgreSQL advisory lock held while migrating


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest revision shipped with this version of syncd."""
    head = ScriptDirectory.from_config(_config(None)).get_current_head()  # type: ignore[arg-type]
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the database's revision, or None before the first migration."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision``, one transaction, one migrator at a time."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(_LOCK_ID)))
        tables = set(inspect(connection).get_table_names())
        config = _config(connection)
        if "events" in tables and "alembic_version" not in tables:
            command.stamp(config, BASELINE)
        command.upgrade(config, revision)
