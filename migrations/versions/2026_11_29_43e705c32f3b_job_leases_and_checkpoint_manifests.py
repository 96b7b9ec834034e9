"""job leases and checkpoint manifests

Revision ID: 43e705c32f3b
Revises: a571603b463e
Create Date: 2026-11-29 00:00:28.396190
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "43e705c32f3b"
down_revision: str | None = "a571603b463e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), server_default="evaluation", nullable=False))
        batch_op.add_column(sa.Column("manifest_sha256", sa.String(length=64), nullable=True))
        batch_op.alter_column("metric_name", existing_type=sa.VARCHAR(length=40), nullable=True)
        batch_op.alter_column("metric_value", existing_type=sa.FLOAT(), nullable=True)

    with op.batch_alter_table("training_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_job", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")

    # hand-off checkpoints have no metric; the old schema cannot hold them
    op.execute("DELETE FROM checkpoint WHERE metric_value IS NULL OR metric_name IS NULL")
    with op.batch_alter_table("checkpoint", schema=None) as batch_op:
        batch_op.alter_column("metric_value", existing_type=sa.FLOAT(), nullable=False)
        batch_op.alter_column("metric_name", existing_type=sa.VARCHAR(length=40), nullable=False)
        batch_op.drop_column("manifest_sha256")
        batch_op.drop_column("kind")
