"""Fine-tuned models a team can serve, and the aliases that pick one."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, String, false
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class RegisteredModel(Base):
    __tablename__ = "registered_model"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("training_job.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(40))
    base_model: Mapped[str] = mapped_column(String(300))
    labels: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    below_baseline: Mapped[bool] = mapped_column(default=False, server_default=false())
    # runtimes it was converted to (app/inference/conversion.py): {"onnx": {"test_accuracy": ..., ...}, ...}
    runtimes: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Alias(Base):
    __tablename__ = "model_alias"

    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # the model taking the most traffic (all of it without `routes`)
    model_id: Mapped[str] = mapped_column(ForeignKey("registered_model.id", ondelete="CASCADE"))
    # a weighted split, [{"model_id": ..., "weight": ...}, ...]; None: model_id takes all the traffic
    routes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # a model that answers a copy of the traffic; its answers are compared and counted, never returned
    shadow_model_id: Mapped[str | None] = mapped_column(
        ForeignKey("registered_model.id", ondelete="SET NULL"), default=None
    )
    # how its models run: "torch" (as trained), "onnx" or "int8" (app/inference/runtimes.py)
    runtime: Mapped[str] = mapped_column(String(10), default="torch", server_default="torch")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    def weighted_routes(self) -> list[tuple[str, int]]:
        """(model id, weight) pairs; an alias without a split sends everything to model_id."""
        if not self.routes:
            return [(self.model_id, 100)]
        return [(str(r["model_id"]), int(r["weight"])) for r in self.routes]


class AliasTraffic(Base):
    """Counters of what one model did for one alias (as a route or as its shadow): one row per (alias, model, role),
    added to by every API process about once a second, never one row per request."""

    __tablename__ = "alias_traffic"

    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(10), primary_key=True)  # "route" or "shadow"
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    inputs: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_total: Mapped[float] = mapped_column(Float, default=0.0)
    # shadow only: inputs whose top label was compared with the served model's, and how many agreed
    compared: Mapped[int] = mapped_column(BigInteger, default=0)
    agreed: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
