"""calibration requests

Model versions the ingester met without a detector calibration; the scheduler's calibration
job runs them and retries failures with backoff (the ingester never calibrates inline).

Revision ID: b41c7e2d9f03
Revises: 7d3e91a0c5b2
Create Date: 2026-11-29 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.db.types

revision: str = "b41c7e2d9f03"
down_revision: str | None = "7d3e91a0c5b2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibration_requests",
        sa.Column("model_name", sa.String(length=255), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("calibration_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("model_name", "model_version"),
    )
    op.create_index(
        "ix_calibration_requests_due",
        "calibration_requests",
        ["status", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_calibration_requests_due", table_name="calibration_requests")
    op.drop_table("calibration_requests")
