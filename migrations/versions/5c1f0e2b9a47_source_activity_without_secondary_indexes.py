"""source_activity without secondary indexes

Every ingested batch updates these rows; without indexes on the updated columns PostgreSQL
updates them in place (HOT), and the scans for dirty rows stay cheap at a few thousand rows.

Revision ID: 5c1f0e2b9a47
Revises: 10e434d7630d
Create Date: 2026-11-25 15:40:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "5c1f0e2b9a47"
down_revision: str | None = "10e434d7630d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("source_activity", schema=None) as batch_op:
        batch_op.drop_index("ix_source_activity_last_seen")
        batch_op.drop_index("ix_source_activity_dirty")


def downgrade() -> None:
    with op.batch_alter_table("source_activity", schema=None) as batch_op:
        batch_op.create_index("ix_source_activity_dirty", ["dirty"], unique=False)
        batch_op.create_index("ix_source_activity_last_seen", ["last_seen"], unique=False)
