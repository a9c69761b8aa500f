"""The PostgreSQL database of a benchmark run: created, emptied and dropped."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/syncd_bench"


def _admin_conninfo(url: str) -> tuple[str, str]:
    """Return a connection string to the ``postgres`` database, and the bench name."""
    params = conninfo_to_dict(url)
    name = params.get("dbname") or "syncd_bench"
    return make_conninfo(url, dbname="postgres"), str(name)


@contextmanager
def bench_database(url: str) -> Iterator[str]:
    """Create the database of ``url`` (dropping an old one), drop it at the end."""
    admin, name = _admin_conninfo(url)
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(statement.format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(statement.format(sql.Identifier(name)))


def reset(url: str) -> None:
    """Drop every table of the bench database, so a benchmark starts empty."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
