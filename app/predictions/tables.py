"""A batch prediction run: a team's dataset scored by one of its models, on a worker."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class PredictionStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE = (PredictionStatus.queued, PredictionStatus.running)


class PredictionRun(Base):
    __tablename__ = "prediction_run"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    # The model and dataset as resolved at submission: moving an alias later does not change a run.
    model_id: Mapped[str | None] = mapped_column(ForeignKey("registered_model.id", ondelete="SET NULL"))
    model_ref: Mapped[str] = mapped_column(String(300))
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("dataset.id", ondelete="SET NULL"))
    split: Mapped[str | None] = mapped_column(String(20))
    top_k: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20), default=PredictionStatus.queued, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # bumped by each claim; later writes are fenced on it
    rows_total: Mapped[int] = mapped_column(Integer, default=0)
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str] = mapped_column(String(300), default="")  # its results (and an uploaded input)
    uploaded: Mapped[bool] = mapped_column(default=False)  # scores an uploaded file (under storage_key/input)
    # Bytes under storage_key (an uploaded input, then the results): counted in the team's storage (GET /usage).
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
