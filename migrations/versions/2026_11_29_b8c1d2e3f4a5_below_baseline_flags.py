"""below-baseline flags on jobs and registered models

Revision ID: b8c1d2e3f4a5
Revises: 43e705c32f3b
Create Date: 2026-11-29 08:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b8c1d2e3f4a5"
down_revision: str | None = "43e705c32f3b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("training_job", "registered_model"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("below_baseline", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    for table in ("registered_model", "training_job"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("below_baseline")
