"""Shared fixtures: a store on SQLite and, when configured, on PostgreSQL.

Set ``SYNCD_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1/test``)
to run every store-backed test against PostgreSQL as well. Each test run
works in a schema of its own in that database, so parallel runs do not
collide, and each PostgreSQL test starts from empty tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from syncd.store import Store
from tests.e2e.sink_server import SinkServer

POSTGRES_URL = os.environ.get("SYNCD_TEST_DATABASE_URL")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """Return a URL whose connections use a schema private to this test run."""
    if not POSTGRES_URL:
        yield None
        return
    schema = f"syncd_test_{os.getpid()}"
    admin = Store(POSTGRES_URL, create=False)
    with admin.engine.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.engine.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str | None
) -> Iterator[str]:
    """Return the URL of an empty database of each supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'syncd.db'}"
        return
    if postgres_url is None:
        pytest.skip("SYNCD_TEST_DATABASE_URL is not set")
    store = Store(postgres_url, create=False)
    SQLModel.metadata.drop_all(store.engine)
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    store.dispose()
    yield postgres_url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """Return an open store on an empty database."""
    opened = Store(database_url)
    yield opened
    opened.dispose()


@pytest.fixture
def sink_server() -> Iterator[SinkServer]:
    """Serve an HTTP receiver for sinks on a free loopback port."""
    server = SinkServer().start()
    yield server
    server.stop()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the root logger set-up that every ``syncd`` invocation does."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
