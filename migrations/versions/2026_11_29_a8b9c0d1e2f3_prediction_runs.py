"""batch prediction runs (POST /predictions)

Revision ID: a8b9c0d1e2f3
Revises: e7f8a9b0c1d2
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a8b9c0d1e2f3"
down_revision: str | None = "e7f8a9b0c1d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=32), nullable=True),
        sa.Column("model_ref", sa.String(length=300), nullable=False),
        sa.Column("dataset_id", sa.String(length=32), nullable=True),
        sa.Column("split", sa.String(length=20), nullable=True),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("rows_total", sa.Integer(), nullable=False),
        sa.Column("rows_done", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("storage_key", sa.String(length=300), nullable=False),
        sa.Column("uploaded", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["dataset.id"], name=op.f("fk_prediction_run_dataset_id_dataset"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_model.id"],
            name=op.f("fk_prediction_run_model_id_registered_model"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name=op.f("fk_prediction_run_team_id_team"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prediction_run")),
    )
    with op.batch_alter_table("prediction_run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prediction_run_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_prediction_run_team_id"), ["team_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("prediction_run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prediction_run_team_id"))
        batch_op.drop_index(batch_op.f("ix_prediction_run_status"))
    op.drop_table("prediction_run")
