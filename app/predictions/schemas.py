"""Batch prediction requests in and run views out."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        None, max_length=300, description="a model id or an alias; default: the 'production' alias"
    )
    dataset_id: str = Field(min_length=1, max_length=64, description="one of your datasets (GET /datasets)")
    split: Literal["train", "val", "test"] | None = Field(None, description="score only this split; default: all")
    top_k: int = Field(1, ge=1, le=100, description="labels (with their probabilities) written per row")


class PredictionUpload(BaseModel):
    """The form fields of POST /predictions as multipart, beside the `file` (a CSV or JSONL of texts)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, max_length=300, description="a model id or an alias; default: 'production'")
    top_k: int = Field(1, ge=1, le=100)
    text_column: str = Field("text", min_length=1, max_length=200)
    label_column: str | None = Field(
        None, min_length=1, max_length=200, description="true labels to copy beside the predictions (optional)"
    )


class PredictionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    status: str
    model_id: str | None
    model_ref: str = Field(description="the model or alias as submitted; model_id is what it resolved to")
    dataset_id: str | None
    uploaded: bool = Field(description="true: scores a file uploaded with the request (dataset_id is null)")
    split: str | None
    top_k: int
    rows_total: int
    rows_done: int
    error: str | None
    size_bytes: int = Field(description="bytes stored (an uploaded file, the results), counted in GET /usage")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
