"""evaluation reports of checkpoints computed on request (GET /jobs/{id}/report?checkpoint=)

Revision ID: e6f7a8b9c0d1
Revises: d5e6f7a8b9c0
Create Date: 2026-11-29 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e6f7a8b9c0d1"
down_revision: str | None = "d5e6f7a8b9c0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.add_column(sa.Column("report_status", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("report_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("report", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("report_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        for column in ("report_error", "report", "report_requested_at", "report_status"):
            batch_op.drop_column(column)
