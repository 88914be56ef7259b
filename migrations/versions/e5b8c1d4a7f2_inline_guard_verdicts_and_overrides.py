"""inline guard verdicts and source overrides

``input_scores.guard_verdict`` / ``guard_reason``: what a guarded model answered (allow, review,
refuse) and why, published with the production record. ``guard_overrides``: a triager's standing
order for a source at the guard (refuse, allow, clear), append-only: the audit trail.

Revision ID: e5b8c1d4a7f2
Revises: c7a4e2d81f50
Create Date: 2026-12-08 03:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.db.types

revision: str = "e5b8c1d4a7f2"
down_revision: str | None = "c7a4e2d81f50"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("input_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("guard_verdict", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("guard_reason", sa.String(length=255), nullable=True))
    op.create_table(
        "guard_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("alert_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["alerts.id"],
            name=op.f("fk_guard_overrides_alert_id_alerts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guard_overrides")),
    )
    op.create_index("ix_guard_overrides_source", "guard_overrides", ["source", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_guard_overrides_source", table_name="guard_overrides")
    op.drop_table("guard_overrides")
    with op.batch_alter_table("input_scores", schema=None) as batch_op:
        batch_op.drop_column("guard_reason")
        batch_op.drop_column("guard_verdict")
