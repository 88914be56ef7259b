"""dashboard sessions

Server-side sessions of the dashboard: the cookie carries a random id, this table its SHA-256,
the user, and the times that end it (idle, absolute, revoked), so that signing out, a password
or role change and removing a user end that user's sessions.

Revision ID: 0e4c0e6c3f71
Revises: b41c7e2d9f03
Create Date: 2026-11-29 16:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import monitor.db.types

revision: str = "0e4c0e6c3f71"
down_revision: str | None = "b41c7e2d9f03"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.String(length=255), nullable=False),
        sa.Column("user_stamp", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("created_at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", monitor.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", monitor.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_dashboard_sessions")),
    )
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_dashboard_sessions_user", ["user_name"], unique=False)
        batch_op.create_index("ix_dashboard_sessions_expires", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dashboard_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_dashboard_sessions_expires")
        batch_op.drop_index("ix_dashboard_sessions_user")
    op.drop_table("dashboard_sessions")
