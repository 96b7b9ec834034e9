"""Job specs in and job views out; the hyperparameters are validated here, once, for API and worker."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.config import DEFAULT_POOL, POOL_PATTERN


class EarlyStopping(BaseModel):
    """Stop when the chosen validation metric has not improved by `min_delta` for `patience` evaluations."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = Field(
        "val_accuracy",
        description="a tie in accuracy or macro-F1 goes to the lower validation loss; val_loss itself often rises "
        "while accuracy still climbs, as a classifier grows confident",
    )
    patience: int = Field(5, ge=1, le=1000, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0, le=1000.0, description="smallest change that counts as an improvement")


class Adapter(BaseModel):
    """A parameter-efficient adapter trained through peft in place of the base model's weights (which stay frozen);
    the new classification head trains in full. The exported model has the adapter merged into its weights."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["lora"] = Field("lora", description='"lora": low-rank updates of chosen Linear and 1x1 Conv layers')
    r: int = Field(
        8,
        ge=1,
        le=256,
        description="rank of each low-rank update; on a convolutional model's default layers, the highest rank up to "
        "this one that keeps the adapter within 1.5% of the model's parameters (the report says which ran)",
    )
    alpha: int = Field(16, ge=1, le=4096, description="scaling: each update is multiplied by alpha / r")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout on the adapter's input (peft's default, 0: at 0.1 the dropout masks cost LoRA 8% "
        "of its speed on MiniLM and 26% on EfficientNet, bench/README.md)",
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="names (or name endings) of the layers to adapt; null: peft's choice for the architecture, else "
        "the attention's query and value projections (BERT/MiniLM, ViT; timm ViT's fused qkv), else, on "
        "convolutional models (EfficientNet, ResNet), the narrowing pointwise (1x1) convolutions past the first "
        "stage and the deepest one. Depthwise/grouped convolutions cannot be merged into exported weights and are "
        "refused",
    )


class Hyperparameters(BaseModel):
    """How to fine-tune. Every field has a default a user can trust; those whose best value depends on the task or
    the data (epochs, batch_size, learning_rate, lr_scheduler, strategy, pooling) are decided by app/jobs/defaults.py when the API accepts
    the job, so the stored spec always says what was used (and, in `auto`, why)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # Infinity or NaN is a 422, never a null

    epochs: int | Literal["auto"] = Field(
        "auto",
        description='passes over the training split (1-1000); "auto": enough for a few hundred optimizer steps '
        "on small sets, 3 (text) or 5 (images) on large ones, at most 60",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="examples per optimizer step; null: 16 for text (more, smaller steps measured better on a few "
        "thousand reviews), 32 for images",
    )
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
    freeze: Literal["none", "backbone", "last_n"] = Field(
        "none",
        description='"backbone": train only the new head; "last_n": train the last `trainable_layers` encoder blocks '
        "(BERT/MiniLM layers, ViT blocks, the stages of timm convolutional models such as EfficientNet), what "
        "follows them (final norm, pooler, convolutional head) and the head, with everything before them frozen",
    )
    trainable_layers: int | None = Field(
        None,
        ge=1,
        le=1000,
        description='with freeze "last_n": how many of the last blocks train (at most the model\'s)',
    )
    class_weights: Literal["none", "balanced"] | dict[Annotated[str, Field(max_length=200)], float] = Field(
        "none",
        description='weights of the classes in the training loss: "none" (all 1); "balanced": n / (classes x count), '
        "from the training split (scikit-learn's compute_class_weight), which helps when some classes are rare; or "
        "{label: weight} (positive; a label left out weighs 1). The validation loss stays unweighted",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of each target spread evenly over all classes (training loss only)"
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="split each batch of batch_size examples into this many micro-batches whose gradients add up "
        "before one optimizer step: the effective batch stays batch_size (which must be a multiple of it) while a "
        "worker holds the activations of batch_size / steps examples only; steps, the scheduler and max_steps "
        "count optimizer steps. On a CUDA out-of-memory error the worker doubles it (halving the micro-batch), says "
        "so in an event and redoes the step",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description='arithmetic of training and evaluation: "auto": bf16 on a GPU that has it natively (Ampere and '
        'later), else fp32 (the worker decides and records why in `auto`); "bf16": bf16 autocast (on a CPU too); '
        '"fp16": fp16 autocast with a gradient scaler, for GPUs without bf16 (a CPU worker trains in fp32 instead '
        'and says so); "fp32": exact',
    )
    augmentation: Literal["none", "light", "trivial"] = Field(
        "none",
        description="image datasets only, training batches only (evaluation, the report and /predict never augment): "
        '"light": a random resized crop (60-100% of the area) back to the image size and a random horizontal flip; '
        '"trivial": light plus TrivialAugmentWide. Flips (and TrivialAugment\'s shears and rotations) can change '
        'what digits or text in an image mean: keep "none" for those',
    )
    strategy: Literal["auto", "full", "lp_ft", "head_only"] = Field(
        "auto",
        description='"full": train everything from a fresh head; "lp_ft": first fit the new head on frozen features '
        '(a linear probe), then train everything; "head_only": train only the head; "auto": full (see README)',
    )
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description='text models only: what the new head reads. "cls": the first token, as the model\'s own '
        'classification class does; "mean": the mean of the token vectors, as sentence-embedding encoders '
        '(sentence-transformers models such as all-MiniLM-L6-v2) were trained to be read; "auto": cls (mean measured '
        "no better), or what a base model this service fine-tuned was trained with",
    )
    adapter: Adapter | None = Field(
        None,
        description='null: train the model\'s own weights as freeze and strategy say; {"type": "lora", ...}: train a '
        'LoRA adapter and the head only (not with freeze "backbone"/"last_n" or strategy "head_only")',
    )
    early_stopping: EarlyStopping | None = Field(default_factory=EarlyStopping)
    eval_every_steps: int | None = Field(None, ge=1, le=10**9, description="evaluate every N steps; null: each epoch")
    seed: int = Field(42, ge=0, le=2**32 - 1)
    image_size: int | None = Field(None, ge=16, le=1024, description="image side in pixels; null: the model's")
    max_length: int = Field(128, ge=8, le=8192, description="tokens per text, longer ones are truncated")
    max_steps: int | None = Field(
        None, ge=1, le=10**9, description="stop after this many optimizer steps (smoke tests)"
    )
    auto: dict[Annotated[str, Field(max_length=40)], Annotated[str, Field(max_length=1000)]] = Field(
        default_factory=dict,
        max_length=40,
        description="read only: what each 'auto' setting became for this job's data, and why",
    )
    expected_memory: dict[str, Any] = Field(
        default_factory=dict,
        description="read only: the memory this job will take in a worker, in MB, estimated at submit (see "
        "app/jobs/memory.py); its decoded dataset must fit data_cache_budget_mb (FINETUNE_JOB_MEMORY_BUDGET_MB)",
    )

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise ValueError('epochs must be a whole number from 1 to 1000, or "auto"')
        return value

    @field_validator("class_weights")
    @classmethod
    def _class_weights(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if not value:
                raise ValueError('class_weights {} weighs nothing; use "none", "balanced" or {label: weight}')
            bad = [label for label, weight in value.items() if not weight > 0]
            if bad:
                raise ValueError(f"class weights must be positive: {', '.join(repr(b) for b in bad[:10])}")
            if len(value) > 10_000:
                raise ValueError("class_weights names more than 10000 labels")
        return value

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self) -> Hyperparameters:
        steps = self.gradient_accumulation_steps
        if self.batch_size is not None and self.batch_size % steps:
            raise ValueError(
                f"batch_size {self.batch_size} is the effective batch and must split evenly into "
                f"gradient_accumulation_steps {steps} micro-batches; use a batch_size that is a multiple of {steps}"
            )
        return self

    @model_validator(mode="after")
    def _head_only_is_a_frozen_backbone(self) -> Hyperparameters:
        """strategy "head_only" and freeze "backbone" are one thing; other strategies train the backbone too."""
        if self.freeze == "last_n" and self.strategy == "head_only":
            raise ValueError('freeze "last_n" trains some blocks too, so strategy "head_only" cannot apply')
        if self.strategy == "head_only" or (self.freeze == "backbone" and self.strategy == "auto"):
            self.strategy, self.freeze = "head_only", "backbone"
        elif self.freeze == "backbone":
            raise ValueError(f'freeze "backbone" trains only the head, so strategy "{self.strategy}" cannot apply')
        if self.freeze == "last_n" and self.trainable_layers is None:
            raise ValueError('freeze "last_n" needs trainable_layers: how many of the last encoder blocks to train')
        if self.freeze != "last_n" and self.trainable_layers is not None:
            raise ValueError('trainable_layers applies only with freeze "last_n"; set freeze to "last_n" or drop it')
        return self

    @model_validator(mode="after")
    def _adapter_trains_instead_of_freezing(self) -> Hyperparameters:
        """An adapter already freezes the base model: it does not mix with the freeze options."""
        if self.adapter is not None and self.freeze != "none":
            raise ValueError(
                f'adapter "{self.adapter.type}" freezes the base model itself and trains the adapter and the head; '
                f'freeze "{self.freeze}"{" (strategy head_only)" if self.strategy == "head_only" else ""} cannot be '
                'combined with it: drop freeze (and strategy "head_only"), or drop adapter'
            )
        return self


class Resources(BaseModel):
    """What a job asks of the fleet: a pool of workers and how many devices of one worker (GET /pools lists them)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(
        1, ge=1, le=64,
        description="devices of one worker; more than 1 trains data-parallel across them, batch_size staying the "
        "global batch (a CPU worker counts as 1 device unless started with --gpus N: then N processes)",
    )  # fmt: skip
    pool: str = Field(DEFAULT_POOL, pattern=POOL_PATTERN, description="the pool whose workers may run it")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    base_model: str = Field(min_length=1, max_length=300, description="a models-dir folder, a model id, or a hub id")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="orders your team's own queued jobs; teams share the fleet by fair share (README)"
    )
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _batch_splits_across_devices(self) -> JobCreate:
        """On several devices batch_size stays the global batch: each device trains batch_size / gpus of it."""
        hp, gpus = self.hyperparameters, self.resources.gpus
        unit = gpus * hp.gradient_accumulation_steps
        if gpus > 1 and hp.batch_size is not None and hp.batch_size % unit:
            each = f" and each share into gradient_accumulation_steps {hp.gradient_accumulation_steps}"
            raise ValueError(
                f"hyperparameters.batch_size {hp.batch_size} is the global batch and must split evenly across "
                f"resources.gpus {gpus} devices{each if hp.gradient_accumulation_steps > 1 else ''}; use a "
                f"batch_size that is a multiple of {unit}, or leave it out"
            )
        return self


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
    below_baseline: bool
    cancel_requested: bool
    priority: str
    resources: Resources
    queue_position: int | None = Field(
        None, description="queued: 1 if it is the next job of its pool to start (an estimate: see README)"
    )
    waiting_for: Literal["claim", "free_worker", "turn", "cap", "worker"] | None = Field(
        None,
        description="queued: claim (a free worker is taking it), free_worker (next, every able worker is busy), "
        "turn (jobs ahead of it), cap (your team runs its cap of jobs), worker (no live worker can run it)",
    )
    waiting_detail: str | None = Field(None, description="the same in a sentence")
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
        computed = {"progress", "resources", "queue_position", "waiting_for", "waiting_detail"}
        return {
            **{k: getattr(obj, k) for k in cls.model_fields if k not in computed},
            "progress": progress,
            "resources": {"gpus": obj.gpus, "pool": obj.pool},
        }


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
    report_status: str | None = Field(
        None, description="null, or the evaluation report asked for with GET /jobs/{id}/report?checkpoint=: queued, "
        "running, done or failed",
    )  # fmt: skip


class EventRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    message: str
    attempt: int
    at: datetime
