"""Building a run from a spec: model with a new head, freezing, optimizer, schedule, data."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import PreTrainedModel, get_scheduler

from app.base_models.resolve import family_of_config
from app.jobs.blocks import find_blocks
from app.jobs.defaults import apply_defaults
from app.jobs.schemas import Hyperparameters
from app.tasktypes.common import head_parameter_names, trained_labels
from app.tasktypes.image import DecodedPerBatch
from app.tasktypes.pooling import use_pooling
from app.tasktypes.specs import task_spec
from app.tasktypes.types import TaskType
from worker.training.adapters import attach_adapter, describe_trainable, trainable_summary
from worker.training.data import prepare_splits
from worker.training.loop import Run
from worker.training.loss import class_weight_tensor
from worker.training.precision import choose_precision, grad_scaler

NO_DECAY = ("bias", "norm", "ln", "layernorm")
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_run(
    task: str,
    base_path: Path,
    labels: list[str],
    records: list[dict],
    hp: Hyperparameters,
    device: torch.device,
    data_budget_bytes: int | None = None,
) -> tuple[Run, list[str]]:
    """A ready-to-train Run and notes worth an event (ignored options and the like). Images are decoded once into
    memory when they fit `data_budget_bytes`, else per batch."""
    seed_everything(hp.seed)
    spec = task_spec(task)
    processor = spec.load_processor(base_path)
    prep = spec.make_preprocessing(processor, labels, hp)
    splits = prepare_splits(records, spec, processor, prep, data_budget_bytes)
    hp = apply_defaults(hp, task, len(splits["train"]))
    assert isinstance(hp.epochs, int) and hp.learning_rate and hp.lr_scheduler and hp.batch_size, (
        "apply_defaults decides"
    )
    loaded, fresh, notes = spec.load_model(base_path, labels, hp.dropout, prep)
    if TaskType(task) == TaskType.text_classification:
        use_pooling(loaded, "cls" if hp.pooling == "auto" else hp.pooling)  # a ValueError says why "mean" cannot
    model: PreTrainedModel | PeftModel = loaded
    if isinstance(splits["train"].encoded, DecodedPerBatch):
        notes.append(
            "the decoded images would take more memory than a job may hold (FINETUNE_JOB_MEMORY_BUDGET_MB): "
            "they are decoded per batch instead, which is slower"
        )
    head = head_parameter_names(loaded, fresh)
    if hp.adapter is not None:
        model, head = attach_adapter(loaded, head, hp.adapter)
        notes.append(describe_trainable(trainable_summary(model, hp.adapter)))
    torch.nn.Module.to(model, device)  # PreTrainedModel.to's type hints reject a device
    if device.type == "cuda" and family_of_config(base_path, TaskType(task)) == "conv_image":
        torch.nn.Module.to(model, memory_format=torch.channels_last)  # tensor-core convolutions want NHWC
    if hp.freeze == "backbone":
        freeze_backbone(model, head)
    elif hp.freeze == "last_n":
        assert hp.trainable_layers is not None, "the schema requires it with last_n"
        freeze_all_but_last(model, head, hp.trainable_layers)
    optimizer = make_optimizer(model, hp, device)
    steps_per_epoch = math.ceil(len(splits["train"]) / hp.batch_size)
    total = steps_per_epoch * hp.epochs
    total = min(total, hp.max_steps) if hp.max_steps else total
    scheduler = get_scheduler(
        SCHEDULERS[hp.lr_scheduler],
        optimizer,
        num_warmup_steps=int(hp.warmup_ratio * total),
        num_training_steps=total,
    )
    run = Run(model, optimizer, scheduler, spec, processor, prep, hp, splits, device, steps_per_epoch, total)
    run.precision = choose_precision(hp.precision, device)
    run.scaler = grad_scaler(device, run.precision)
    # A head of the right size for other labels (LABEL_0, LABEL_1...) is as good as new: it knows nothing of these.
    run.head, run.head_is_new = sorted(head), bool(fresh) or trained_labels(base_path) != labels
    weights = class_weight_tensor(hp, labels, splits["train"].labels)
    run.class_weights = weights.to(device) if weights is not None else None
    return run, notes


def freeze_backbone(model: torch.nn.Module, head: set[str]) -> None:
    """Train only the classification head."""
    if not head:
        raise ValueError("could not find this model's classification head to leave trainable; use freeze='none'")
    for name, param in model.named_parameters():
        param.requires_grad = name in head


def freeze_all_but_last(model: torch.nn.Module, head: set[str], n: int) -> None:
    """Train the last `n` blocks of the model's block list (app/jobs/blocks.py), every parameter registered after
    that list (final norm, pooler, convolutional head: they sit between the last block and the head) and the head;
    freeze the rest (embeddings, stem, earlier blocks)."""
    if not head:
        raise ValueError("could not find this model's classification head to leave trainable; use freeze='none'")
    names = [name for name, _ in model.named_parameters()]
    blocks = find_blocks(names)
    if blocks is None:
        raise ValueError("this model has no encoder blocks or stages that freeze 'last_n' can find; use 'backbone'")
    if n > blocks.count:
        raise ValueError(f"trainable_layers {n} is more than this model's {blocks.count} blocks ({blocks.prefix})")
    last_in_blocks = max(i for i, name in enumerate(names) if blocks.block_of(name) is not None)
    for i, (name, param) in enumerate(model.named_parameters()):
        block = blocks.block_of(name)
        param.requires_grad = name in head or i > last_in_blocks or (block is not None and block >= blocks.count - n)


def make_optimizer(model: torch.nn.Module, hp: Hyperparameters, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused: faster on CPU and GPU) or SGD; no weight decay on biases and norms."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or any(k in name.lower() for k in NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    assert hp.learning_rate is not None, "apply_defaults decides it"
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.learning_rate, momentum=hp.momentum)
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=True)
