"""Model and alias views."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    name: str
    task: str
    base_model: str
    job_id: str | None
    labels: list[str]
    metrics: dict[str, Any]
    below_baseline: bool
    created_at: datetime


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1, max_length=64)
    force: bool = Field(False, description="point the alias at a model flagged below_baseline all the same")


class AliasRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    name: str
    model_id: str
    updated_at: datetime
