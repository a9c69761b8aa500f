"""The first schema: the event log, cursors, runs, outbox, gaps, quarantine.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Times are stored as UTC; syncd's UTCDateTime type reads them back aware.
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cursors",
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("listing", sa.String(length=128), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(), nullable=True),
        sa.Column("last_modified", sa.String(), nullable=True),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("provider", "listing"),
    )
    op.create_table(
        "deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("event_offset", sa.BigInteger(), nullable=False),
        sa.Column("sink", sa.String(length=64), nullable=False),
        sa.Column("resource", sa.String(length=600), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("next_attempt_at", TIME, nullable=False),
        sa.Column("delivered_at", TIME, nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_offset", "sink", name="uq_deliveries_event_sink"),
    )
    op.create_index(
        "ix_deliveries_due",
        "deliveries",
        ["sink", "status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_deliveries_resource", "deliveries", ["sink", "resource", "id"], unique=False
    )
    op.create_table(
        "events",
        sa.Column(
            "offset",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("occurred_at", TIME, nullable=False),
        sa.Column("first_seen_at", TIME, nullable=False),
        sa.Column("first_source", sa.String(length=16), nullable=False),
        sa.Column("webhook_seen_at", TIME, nullable=True),
        sa.Column("poll_seen_at", TIME, nullable=True),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("resource", sa.String(length=512), nullable=True),
        sa.Column("version", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("offset"),
        sa.UniqueConstraint("provider", "key", name="uq_events_provider_key"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_events_provider_type", "events", ["provider", "type"], unique=False
    )
    op.create_index(
        "ix_events_resource", "events", ["provider", "resource"], unique=False
    )
    op.create_table(
        "gaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("listing", sa.String(length=128), nullable=False),
        sa.Column("since", TIME, nullable=False),
        sa.Column("until", TIME, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detected_at", TIME, nullable=False),
        sa.Column("resolved_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_gaps_provider", "gaps", ["provider", "resolved_at"], unique=False
    )
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("listing", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("seen_at", TIME, nullable=False),
        sa.Column("last_seen_at", TIME, nullable=False),
        sa.Column("times_seen", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "provider", "listing", "digest", name="uq_quarantine_provider_item"
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("window_since", TIME, nullable=True),
        sa.Column("window_until", TIME, nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("listed", sa.Integer(), nullable=False),
        sa.Column("new", sa.Integer(), nullable=False),
        sa.Column("already", sa.Integer(), nullable=False),
        sa.Column("by_type", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_runs_provider_kind", "runs", ["provider", "kind", "id"], unique=False
    )
    op.create_table(
        "source_stats",
        sa.Column("provider", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("last_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("provider", "source"),
    )


def downgrade() -> None:
    for table in (
        "source_stats",
        "runs",
        "quarantine",
        "gaps",
        "events",
        "deliveries",
        "cursors",
    ):
        op.drop_table(table)
