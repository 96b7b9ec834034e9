"""Job specs in and job views out; the hyperparameters are validated here, once, for API and worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EarlyStopping(BaseModel):
    """Stop when the chosen validation metric has not improved by `min_delta` for `patience` evaluations."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_loss"
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, description="smallest change that counts as an improvement")


# What a field left out (null) means, per task: measured with bench/accuracy.py (MNIST-1k with EfficientNet-Lite0
# reached >= 98%, Rotten Tomatoes-2k with MiniLM-L6 >= 80%). Convolutional image heads and backbones take a larger
# step than a pretrained transformer encoder does; SGD's rates follow the usual 10x-AdamW rule of thumb.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "image_classification": {"epochs": 5, "lr_scheduler": "cosine", "learning_rate": {"adamw": 1e-3, "sgd": 1e-2}},
    "text_classification": {"epochs": 3, "lr_scheduler": "linear", "learning_rate": {"adamw": 1e-4, "sgd": 1e-3}},
}


class Hyperparameters(BaseModel):
    """How to fine-tune. Every field has a default a user can trust for a small classification dataset; the few
    whose best value depends on the task (epochs, learning_rate, lr_scheduler) are null until `for_task` fills them
    in, which the API does when it accepts a job, so the stored spec always says what was used."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(
        None, ge=1, le=1000, description="passes over the training split; null: 5 for images, 3 for text"
    )
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float | None = Field(
        None, gt=0.0, le=1.0, description="peak learning rate; null: AdamW 1e-3 for images, 1e-4 for text (SGD 10x)"
    )
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (ignored by AdamW)")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = Field(
        None, description="null: cosine for images, linear for text"
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of steps spent warming up")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="clip gradients to this norm; null: no clipping")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="classifier dropout, where the model has one")
    freeze: Literal["none", "backbone"] = "none"
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping)
    eval_every_steps: int | None = Field(None, ge=1, description="evaluate every N steps; null: each epoch")
    seed: int = Field(42, ge=0, le=2**32 - 1)
    image_size: int | None = Field(None, ge=16, le=1024, description="image side in pixels; null: the model's")
    max_length: int = Field(128, ge=8, le=8192, description="tokens per text, longer ones are truncated")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (smoke tests)")

    def for_task(self, task: str) -> Hyperparameters:
        """A copy with the task's defaults in every field the user left null (idempotent)."""
        defaults = TASK_DEFAULTS[task]
        filled = {
            "epochs": self.epochs or defaults["epochs"],
            "lr_scheduler": self.lr_scheduler or defaults["lr_scheduler"],
            "learning_rate": self.learning_rate or defaults["learning_rate"][self.optimizer],
        }
        return self.model_copy(update=filled)


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1)
    base_model: str = Field(min_length=1, max_length=300, description="a models-dir folder, a model id, or a hub id")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    dataset_id: str | None
    task: str
    base_model: str
    hyperparameters: dict[str, Any]
    status: str
    progress: float
    epoch: int
    step: int
    total_steps: int | None
    best_metric_name: str | None
    best_metric: float | None
    error: str | None
    attempt: int
    model_id: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _progress(cls, obj: Any) -> Any:
        if isinstance(obj, dict):
            return obj
        total = obj.total_steps or 0
        done = obj.status == "succeeded"
        progress = 1.0 if done else (min(obj.step / total, 1.0) if total else 0.0)
        return {**{k: getattr(obj, k) for k in cls.model_fields if k != "progress"}, "progress": progress}


class MetricRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    step: int
    epoch: float
    value: float
    at: datetime


class CheckpointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    step: int
    epoch: int
    kind: str
    storage_key: str
    metric_name: str | None
    metric_value: float | None
    is_best: bool
    created_at: datetime


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    message: str
    attempt: int
    at: datetime
