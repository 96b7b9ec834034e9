"""alias routes (weighted split), shadow model, and per-alias traffic counters

Revision ID: f7a8b9c0d1e2
Revises: e6f7a8b9c0d1
Create Date: 2026-11-29 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f7a8b9c0d1e2"
down_revision: str | None = "e6f7a8b9c0d1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_alias", schema=None) as batch_op:
        batch_op.add_column(sa.Column("routes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("shadow_model_id", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_alias_shadow_model_id_registered_model"),
            "registered_model",
            ["shadow_model_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.create_table(
        "alias_traffic",
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("inputs", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_total", sa.Float(), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("agreed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name=op.f("fk_alias_traffic_team_id_team"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", "alias", "model_id", "role", name=op.f("pk_alias_traffic")),
    )


def downgrade() -> None:
    op.drop_table("alias_traffic")
    with op.batch_alter_table("model_alias", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_model_alias_shadow_model_id_registered_model"), type_="foreignkey")
        batch_op.drop_column("shadow_model_id")
        batch_op.drop_column("routes")
