"""alias runtime (torch, onnx, int8) and the converted runtimes recorded on each model

Revision ID: b0c1d2e3f4a5
Revises: b2c3d4e5f6a7
Create Date: 2026-11-29 22:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b0c1d2e3f4a5"
down_revision: str | None = "b2c3d4e5f6a7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_alias", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtime", sa.String(length=10), server_default="torch", nullable=False))
    with op.batch_alter_table("registered_model", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runtimes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("registered_model", schema=None) as batch_op:
        batch_op.drop_column("runtimes")
    with op.batch_alter_table("model_alias", schema=None) as batch_op:
        batch_op.drop_column("runtime")
