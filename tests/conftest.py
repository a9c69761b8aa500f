"""Shared fixtures: a store on SQLite and, when configured, on PostgreSQL.

Set ``SYNCD_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1/test``)
to run every store-backed test against PostgreSQL as well. Each PostgreSQL
test starts from empty tables.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import SQLModel

from syncd.store import Store

POSTGRES_URL = os.environ.get("SYNCD_TEST_DATABASE_URL")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Return the URL of an empty database of each supported kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'syncd.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("SYNCD_TEST_DATABASE_URL is not set")
    store = Store(POSTGRES_URL, create=False)
    SQLModel.metadata.drop_all(store.engine)
    store.dispose()
    yield POSTGRES_URL


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """Return an open store on an empty database."""
    opened = Store(database_url)
    yield opened
    opened.dispose()
