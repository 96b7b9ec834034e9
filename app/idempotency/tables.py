"""Requests sent with an Idempotency-Key: the first answer, kept for a day, is the answer to every replay."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class IdempotentRequest(Base):
    __tablename__ = "idempotent_request"

    team_id: Mapped[str] = mapped_column(ForeignKey("team.id", ondelete="CASCADE"), primary_key=True)
    route: Mapped[str] = mapped_column(String(40), primary_key=True)  # "POST /jobs"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 of what the request asked for
    status_code: Mapped[int | None] = mapped_column(default=None)  # None while the first request is in flight
    response: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
