"""Teams own every resource; API keys identify a team (only their hash is stored)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow

# What a key may do unless it was created with --scope (admin is only ever given on request).
DEFAULT_SCOPES = "read,train,predict"


class Team(Base):
    __tablename__ = "team"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # the team's own limits; None: the service's (FINETUNE_TEAM_MAX_ACTIVE_JOBS, FINETUNE_TEAM_MAX_STORAGE_MB)
    max_active_jobs: Mapped[int | None] = mapped_column(default=None)
    max_storage_mb: Mapped[int | None] = mapped_column(default=None)
    # its share of the fleet against other teams' (None: 1.0), and the most jobs it may run at once (None: the
    # service's FINETUNE_TEAM_MAX_RUNNING_JOBS); see app/jobs/scheduling.py
    weight: Mapped[float | None] = mapped_column(Float, default=None)
    max_running_jobs: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # comma-separated, from app.teams.scopes.Scope
    scopes: Mapped[str] = mapped_column(String(100), default=DEFAULT_SCOPES, server_default=DEFAULT_SCOPES)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # updated at most once a minute per key (see app.teams.service.authenticate)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
