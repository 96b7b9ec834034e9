"""fleet: job priority and resources, team weights and caps, device usage, the worker registry

Revision ID: e7f8a9b0c1d2
Revises: f7a8b9c0d1e2
Create Date: 2026-11-29 18:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e7f8a9b0c1d2"
down_revision: str | None = "f7a8b9c0d1e2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.String(length=10), server_default="normal", nullable=False))
        batch_op.add_column(sa.Column("pool", sa.String(length=40), server_default="default", nullable=False))
        batch_op.add_column(sa.Column("gpus", sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch_op.create_index("ix_training_job_status_pool", ["status", "pool"], unique=False)
    with op.batch_alter_table("team", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
    op.create_table(
        "device_usage",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_job.id"], name=op.f("fk_device_usage_job_id_training_job"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name=op.f("fk_device_usage_team_id_team"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_usage")),
    )
    with op.batch_alter_table("device_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_usage_ended_at"), ["ended_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_usage_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_usage_team_id"), ["team_id"], unique=False)
    op.create_table(
        "fleet_worker",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("pool", sa.String(length=40), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("device_kind", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fleet_worker")),
    )
    with op.batch_alter_table("fleet_worker", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fleet_worker_pool"), ["pool"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fleet_worker", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fleet_worker_pool"))
    op.drop_table("fleet_worker")
    with op.batch_alter_table("device_usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_usage_team_id"))
        batch_op.drop_index(batch_op.f("ix_device_usage_job_id"))
        batch_op.drop_index(batch_op.f("ix_device_usage_ended_at"))
    op.drop_table("device_usage")
    with op.batch_alter_table("team", schema=None) as batch_op:
        batch_op.drop_column("max_running_jobs")
        batch_op.drop_column("weight")
    with op.batch_alter_table("training_job", schema=None) as batch_op:
        batch_op.drop_index("ix_training_job_status_pool")
        batch_op.drop_column("gpus")
        batch_op.drop_column("pool")
        batch_op.drop_column("priority")
