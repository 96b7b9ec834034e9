"""A sweep (its spec and where it stands) and its trials (one training job and one Optuna trial each)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class SweepStatus(StrEnum):
    running = "running"
    succeeded = "succeeded"  # ended on max_trials or the budget with at least one completed trial
    failed = "failed"  # ended without a completed trial
    cancelled = "cancelled"


class Sweep(Base):
    __tablename__ = "sweep"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"))
    base_model: Mapped[str] = mapped_column(String(300))
    # the request as accepted: fixed hyperparameters, search space, objective, sampler, pruner, budget
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    study_name: Mapped[str] = mapped_column(String(100), unique=True)
    status: Mapped[str] = mapped_column(String(20), default=SweepStatus.running, index=True)
    # trials started so far (rejected ones too): the fence of every start, so two processes never start one twice
    trials_started: Mapped[int] = mapped_column(Integer, default=0)
    stop_reason: Mapped[str | None] = mapped_column(Text, default=None)
    promoted_model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class SweepTrial(Base):
    """One trial: the Optuna trial (its number in the study) and the job that trains it. A resumed job finds its
    trial here, so it reports to the same Optuna trial; `told_state` is set once, when the study was told the end."""

    __tablename__ = "sweep_trial"
    __table_args__ = (UniqueConstraint("sweep_id", "number", name="uq_sweep_trial_sweep_id_number"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweep.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # the Optuna trial number in the sweep's study
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_job.id", ondelete="SET NULL"), unique=True, default=None
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    told_state: Mapped[str | None] = mapped_column(String(20), default=None)  # complete, pruned, fail
    value: Mapped[float | None] = mapped_column(Float, default=None)  # the objective told to the study
    error: Mapped[str | None] = mapped_column(Text, default=None)  # a trial the service refused to start
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    told_at: Mapped[datetime | None] = mapped_column(default=None)
