"""Model and alias views."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

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


class ImprovementRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["macro_f1", "accuracy"] = Field(
        "macro_f1", description="the test-split score the new model must beat (strictly)"
    )


class AliasSet(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_id: str = Field(min_length=1, max_length=64)
    force: bool = Field(False, description="point the alias at a model flagged below_baseline all the same")
    require_improvement: ImprovementRule | None = Field(
        None,
        description="move the alias only if the model beats the alias's current one on this metric, both measured "
        "on the test split of the same dataset: otherwise 409 with both scores (`current`, `candidate`), and 422 "
        "when they were evaluated on different datasets. An alias that does not exist yet is simply created",
    )


class AliasRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    name: str
    model_id: str
    updated_at: datetime
