"""audit run info and input conversions

``audits.run_info``: how an audit ran beside its configuration (the model's input contract,
the eps grid and why, the batch size chosen for the memory available). ``input_scores.conversion``:
what the ingester did to fit an input to its model (resize, colour mode), kept with the score.

Revision ID: c7a4e2d81f50
Revises: 0e4c0e6c3f71
Create Date: 2026-11-29 20:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c7a4e2d81f50"
down_revision: str | None = "0e4c0e6c3f71"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_info", sa.JSON(), nullable=True))
    with op.batch_alter_table("input_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("conversion", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("input_scores", schema=None) as batch_op:
        batch_op.drop_column("conversion")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_column("run_info")
