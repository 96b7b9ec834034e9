"""The workers the fleet has seen: each registers its pool and device count at start and renews a heartbeat."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class FleetWorker(Base):
    __tablename__ = "fleet_worker"

    # the worker process's identity, as a job's `worker` column names it (app.processes.worker_identity)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    pool: Mapped[str] = mapped_column(String(40), index=True)
    devices: Mapped[int]
    device_kind: Mapped[str] = mapped_column(String(20))  # cuda or cpu
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
