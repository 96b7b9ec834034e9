"""Dataset views."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str
    filename: str
    labels: list[str]
    counts: dict[str, Any]
    warnings: list[str]
    num_examples: int
    size_bytes: int
    splits_given: bool
    created_at: datetime
