"""Index outbox rows by sink, status and resource.

The ordered claim ranks the pending rows of a sink by resource, and this
index lets it read them without the sink's delivered rows, which grow
without limit. The newest delivered time of a resource is read through it
too. ``if_not_exists`` covers a database whose tables were created from the
models, which already have this index, before migrations existed.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_status_resource",
        "deliveries",
        ["sink", "status", "resource"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_status_resource", table_name="deliveries")
