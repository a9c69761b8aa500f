"""Keep when a delivery was first queued, which retries do not reset.

``created_at`` restarts on a retry so that ``max_age`` counts from it;
``first_queued_at`` keeps the original time for the oldest-pending age that
``syncd status`` shows.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("first_queued_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE deliveries SET first_queued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("first_queued_at")
