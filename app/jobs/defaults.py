"""Defaults that adapt to the data: what a hyperparameter left out (or "auto") becomes for this task and dataset.

Applied when the API accepts a job, so the stored spec says what the job will use and, under `auto`, why. The rule
for epochs: enough passes for at least `min_steps` optimizer steps (a fresh head and a pretrained backbone need a
few hundred steps to move together, however small the training split), at least the task's usual number of epochs,
at most MAX_EPOCHS; many short epochs are evaluated about EVALUATIONS times rather than after each one. Early
stopping on the validation split, with the best checkpoint restored, makes the extra epochs cheap when they are not
needed. Measured with bench/small_data.py and bench/accuracy.py (see bench/README.md).
"""

from __future__ import annotations

import math
from typing import Any

from app.jobs.schemas import Hyperparameters
from app.tasktypes.types import TaskType

TASK_DEFAULTS: dict[TaskType, dict[str, Any]] = {
    TaskType.image_classification: {
        "epochs": 5,
        "batch_size": 32,
        "min_steps": 150,
        "lr_scheduler": "cosine",
        "family": "conv_image",
    },
    # Text: batch 16 and a floor of 500 steps (the same 8,000 examples as 250 steps of 32). On 3,000 Rotten Tomatoes
    # reviews batch 32 gave 78.7% and batch 16 81.5% (bench/small_data.py); Trainer's batch 8 gave 80.1%. At least
    # 4 epochs: on 3,000 reviews, 3 seeds, 3 epochs gave 80.3% on average and 4 gave 81.0%, the best checkpoint still
    # the last; sets under 2,000 rows reach the floor in 4 epochs or more anyway (Rotten Tomatoes-2k: 4, as before).
    TaskType.text_classification: {
        "epochs": 4,
        "batch_size": 16,
        "min_steps": 500,
        "lr_scheduler": "linear",
        "family": "text_encoder",
    },
}
# Peak learning rates by model family (SGD: the usual 10x AdamW). Convolutional heads and backbones take larger steps
# than pretrained transformer encoders; vision transformers follow their fine-tuning recipes (1e-4 with AdamW), as
# no pretrained ViT ships offline to measure here.
LEARNING_RATES: dict[str, dict[str, float]] = {
    "text_encoder": {"adamw": 1e-4, "sgd": 1e-3},
    "conv_image": {"adamw": 1e-3, "sgd": 1e-2},
    "vision_transformer": {"adamw": 1e-4, "sgd": 1e-3},
}
# With an adapter (LoRA) only a few low-rank updates and the head train, and they take larger steps: the LoRA paper's
# rates for RoBERTa-base on GLUE (4e-4 to 5e-4) for transformers, twice the full rate for convolutional models.
# Measured beside full fine-tuning (bench/accuracy.py, bench/README.md): MiniLM 80.9% vs 81.1% on Rotten Tomatoes-2k,
# EfficientNet-Lite0 96.9% vs 97.9% on MNIST-1k (with ADAPTER_MIN_STEPS); 6e-3 for EfficientNet did no better.
ADAPTER_LEARNING_RATES: dict[str, dict[str, float]] = {
    "text_encoder": {"adamw": 5e-4, "sgd": 5e-3},
    "conv_image": {"adamw": 2e-3, "sgd": 2e-2},
    "vision_transformer": {"adamw": 5e-4, "sgd": 5e-3},
}
# LoRA on a convolutional model learns more slowly than full fine-tuning: on EfficientNet-Lite0 and MNIST-1k its best
# checkpoint was still the last one after 160 steps (90-93%) and reached 96.2% after 480 (bench/README.md), so "auto"
# gives it a higher floor of optimizer steps. Text encoders with LoRA matched full fine-tuning on the usual floor.
ADAPTER_MIN_STEPS: dict[str, int] = {"conv_image": 450}
MAX_EPOCHS = 60
# Only the worker that runs a job knows its device: it replaces this with what it chose (worker/training/precision.py).
AUTO_PRECISION = "decided by the worker that runs the job: bf16 on a GPU with native bf16, else fp32"
EVALUATIONS = 10  # when "auto" makes many short epochs, evaluate about this many times instead of every epoch
# Measured on Rotten Tomatoes-100 with MiniLM (bench/small_data.py): starting from a linear-probe head (lp_ft) at the
# default rate overfits within 20 steps (validation accuracy 61% against 68% from a fresh head), so "auto" trains a
# fresh head; lp_ft stays a named option.


def auto_epochs(
    task: TaskType, train_rows: int, batch_size: int, family: str | None = None, adapter: bool = False
) -> tuple[int, str]:
    """Epochs for `train_rows` examples in batches of `batch_size` (for a model of `family`, with or without an
    adapter), and the reason, in words."""
    defaults = TASK_DEFAULTS[task]
    min_steps, why_steps = defaults["min_steps"], ""
    family = family or defaults["family"]
    if adapter and family in ADAPTER_MIN_STEPS:
        min_steps, why_steps = ADAPTER_MIN_STEPS[family], " (LoRA on a convolutional model learns more slowly)"
    steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
    needed = math.ceil(min_steps / steps_per_epoch)
    epochs = min(max(needed, defaults["epochs"]), MAX_EPOCHS)
    reason = (
        f"{epochs} epochs of {steps_per_epoch} steps ({train_rows} training examples, batch {batch_size}) = "
        f"{epochs * steps_per_epoch} optimizer steps: at least {min_steps} steps{why_steps} and "
        f"{defaults['epochs']} epochs, at most {MAX_EPOCHS} epochs; early stopping keeps the best checkpoint"
    )
    return epochs, reason


def auto_batch_size(task: TaskType, micro_batches: int, devices: int = 1) -> tuple[int, str]:
    """The task's batch, rounded up so that it splits evenly across the devices and each device's share into the
    gradient-accumulation micro-batches, and the reason."""
    default = TASK_DEFAULTS[task]["batch_size"]
    unit = micro_batches * devices
    batch = math.ceil(default / unit) * unit
    reason = f"{batch}: the default for {task.value.replace('_', ' ')}"
    if batch != default:
        parts = [f"gradient_accumulation_steps {micro_batches}"] if micro_batches > 1 else []
        parts += [f"resources.gpus {devices}"] if devices > 1 else []
        reason += f" ({default}), rounded up to a multiple of {' x '.join(parts)}"
    return batch, reason


def auto_strategy(train_rows: int) -> tuple[str, str]:
    return "full", "full: a fresh head and the whole model train together (lp_ft measured worse on small sets)"


def auto_pooling() -> tuple[str, str]:
    """What a text model's new head reads: the first token. Mean pooling, what sentence-embedding encoders were
    trained for, measured no better on Rotten Tomatoes (bench/README.md), so it is a named option."""
    return "cls", (
        'cls: the first token, as the model\'s own classification head reads it (pooling "mean" measured no '
        "better with MiniLM on 1,000 reviews)"
    )


def apply_defaults(
    hp: Hyperparameters, task: TaskType | str, train_rows: int, family: str | None = None, devices: int = 1
) -> Hyperparameters:
    """A copy with every left-out or "auto" field decided for this task, model family, training split and number of
    devices (idempotent: the worker applies it again)."""
    task = TaskType(task)
    defaults = TASK_DEFAULTS[task]
    filled: dict[str, Any] = {"lr_scheduler": hp.lr_scheduler or defaults["lr_scheduler"]}
    auto = dict(hp.auto)
    batch_size = hp.batch_size
    if batch_size is None:
        batch_size, auto["batch_size"] = auto_batch_size(task, hp.gradient_accumulation_steps, devices)
        filled["batch_size"] = batch_size
    family = family if family in LEARNING_RATES else defaults["family"]
    if hp.learning_rate is None:
        rates = ADAPTER_LEARNING_RATES if hp.adapter is not None else LEARNING_RATES
        filled["learning_rate"] = rates[family][hp.optimizer]
        auto["learning_rate"] = (
            f"{filled['learning_rate']:g}: {hp.optimizer}'s rate for {family.replace('_', ' ')} models"
            f"{' with a ' + hp.adapter.type + ' adapter' if hp.adapter is not None else ''}"
        )
    if hp.epochs == "auto":
        filled["epochs"], auto["epochs"] = auto_epochs(task, train_rows, batch_size, family, hp.adapter is not None)
        steps_per_epoch = max(1, math.ceil(train_rows / batch_size))
        if hp.eval_every_steps is None and filled["epochs"] > EVALUATIONS:
            filled["eval_every_steps"] = math.ceil(filled["epochs"] * steps_per_epoch / EVALUATIONS)
            auto["eval_every_steps"] = (
                f"{filled['eval_every_steps']} steps: {EVALUATIONS} evaluations over {filled['epochs']} short epochs"
            )
    if hp.strategy == "auto":
        filled["strategy"], auto["strategy"] = auto_strategy(train_rows)
    if hp.pooling == "auto" and task == TaskType.text_classification:
        filled["pooling"], auto["pooling"] = auto_pooling()
    if hp.precision == "auto" and "precision" not in auto:
        auto["precision"] = AUTO_PRECISION
    filled["auto"] = auto
    return hp.model_copy(update=filled)
