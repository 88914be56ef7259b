"""incidents and sequential alert state

Alerts become incidents (one per source, the rules as evidence: ``rules``); the cool-down is
counted in record time from ``closed_watermark``; each source keeps the state of its sequential
rate tests (``source_activity.sequential``).

Revision ID: 7d3e91a0c5b2
Revises: 5c1f0e2b9a47
Create Date: 2026-11-29 11:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.db.types

revision: str = "7d3e91a0c5b2"
down_revision: str | None = "5c1f0e2b9a47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rules", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("sources", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("closed_watermark", monitor.db.types.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("source_activity", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sequential", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("best", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("best_p", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_activity", schema=None) as batch_op:
        batch_op.drop_column("best_p")
        batch_op.drop_column("best")
        batch_op.drop_column("sequential")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("closed_watermark")
        batch_op.drop_column("sources")
        batch_op.drop_column("rules")
