"""A training job and what its run leaves behind: metrics, checkpoints, events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from app.config import DEFAULT_POOL
from app.db import Base, new_id, utcnow

# SQLite only auto-increments INTEGER PRIMARY KEY; BIGINT elsewhere.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    pruned = "pruned"  # a sweep trial its study's pruner stopped early (see app/sweeps)


class Priority(StrEnum):
    """Orders a team's own queued jobs (high first); other teams' jobs are ordered by fair share (app/jobs/scheduling)."""

    low = "low"
    normal = "normal"
    high = "high"


FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.pruned)
ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)


class TrainingJob(Base):
    __tablename__ = "training_job"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"), index=True)
    task: Mapped[str] = mapped_column(String(40))
    base_model: Mapped[str] = mapped_column(String(300))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.queued, index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempt: Mapped[int] = mapped_column(default=0)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    epoch: Mapped[int] = mapped_column(default=0)
    step: Mapped[int] = mapped_column(default=0)
    total_steps: Mapped[int | None] = mapped_column(default=None)
    best_metric_name: Mapped[str | None] = mapped_column(String(40), default=None)
    best_metric: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # its validation accuracy never beat the majority class: it learned nothing the labels' counts do not tell
    below_baseline: Mapped[bool] = mapped_column(default=False, server_default=false())
    # what it asked of the fleet: a pool of workers and how many of one worker's devices (app/fleet)
    priority: Mapped[str] = mapped_column(String(10), default=Priority.normal, server_default=Priority.normal)
    pool: Mapped[str] = mapped_column(String(40), default=DEFAULT_POOL, server_default=DEFAULT_POOL)
    gpus: Mapped[int] = mapped_column(default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


Index("ix_training_job_status_pool", TrainingJob.status, TrainingJob.pool)


class DeviceUsage(Base):
    """One attempt's hold on devices: `devices` from its claim (`started_at`) until it ended (`ended_at`; None while
    it runs). Fair share sums these over a sliding window (app/jobs/scheduling.py)."""

    __tablename__ = "device_usage"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    # kept when the job is deleted: deleting finished jobs must not clear a team's recent usage
    job_id: Mapped[str | None] = mapped_column(ForeignKey("training_job.id", ondelete="SET NULL"), index=True)
    attempt: Mapped[int]
    devices: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Metric(Base):
    __tablename__ = "metric"
    __table_args__ = (Index("ix_metric_job_id_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_job.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(40))
    step: Mapped[int]
    epoch: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_metric_job_id_id", Metric.job_id, Metric.id)


class Checkpoint(Base):
    __tablename__ = "checkpoint"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_job.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]
    epoch: Mapped[int]
    storage_key: Mapped[str] = mapped_column(String(300))
    kind: Mapped[str] = mapped_column(String(20), default="evaluation", server_default="evaluation")  # or handoff
    metric_name: Mapped[str | None] = mapped_column(String(40))
    metric_value: Mapped[float | None] = mapped_column(Float)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    is_best: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # An evaluation report asked for with GET /jobs/{id}/report?checkpoint= (app/jobs/checkpoint_reports.py).
    report_status: Mapped[str | None] = mapped_column(String(20), default=None)  # queued, running, done, failed
    report_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    report_error: Mapped[str | None] = mapped_column(Text, default=None)


class JobEvent(Base):
    __tablename__ = "job_event"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("training_job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(default=0)
    at: Mapped[datetime] = mapped_column(default=utcnow)
