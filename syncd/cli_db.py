"""``syncd db``: schema migrations of the configured database."""

from __future__ import annotations

import click

from syncd.errors import ConfigError
from syncd.migrate import current_revision, head_revision, upgrade
from syncd.store import Store


def register(main: click.Group, options: dict) -> None:
    """Add the ``db`` group to the main command."""
    config_option, load_config = options["config"], options["load"]
    report_problems = options["problems"]

    @main.group()
    def db() -> None:
        """Manage the database schema."""

    @db.command("upgrade")
    @config_option
    def upgrade_command(config_path: str | None) -> None:
        """Upgrade the schema to this version's newest revision.

        syncd also upgrades at start; run this to upgrade ahead of a restart.
        """
        config = load_config(config_path)
        try:
            store = Store(config.daemon.database, create=False)
        except ConfigError as exc:
            report_problems(exc)
        try:
            before = current_revision(store.engine)
            upgrade(store.engine)
            click.echo(f"schema at {head_revision()} (was {before or 'empty'})")
        finally:
            store.dispose()
