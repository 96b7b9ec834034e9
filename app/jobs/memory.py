"""What a job will hold in a worker's memory, estimated at submit from the dataset's size, the spec and the base
model's files, without loading anything.

The decoded dataset is the part that grows with the data: a worker keeps every image as uint8 at its training size
(3 bytes a pixel) and every text as token ids, so `rows x image_size^2 x 3` (or `rows x max_length` ids) is known
before a job runs. It must fit the budget (FINETUNE_JOB_MEMORY_BUDGET_MB), or the job is refused with what to
change; a worker that finds more than the budget's worth (a size the API could not know) decodes per batch instead.
The model's weights, its gradients and optimizer state, and one batch's activations are shown beside it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import InvalidInput
from app.jobs.defaults import TASK_DEFAULTS
from app.jobs.schemas import Hyperparameters
from app.tasktypes.image import DEFAULT_IMAGE_SIZE
from app.tasktypes.types import TaskType

if TYPE_CHECKING:
    from app.base_models.resolve import BaseModelRef
    from app.datasets.tables import Dataset

MB = 2**20
CHANNELS = 3
# a token id in a Python list: an 8-byte slot and a 28-byte int object (only ids up to 256 are shared)
TOKEN_BYTES = 36
SPECIAL_TOKENS = 2  # [CLS] and [SEP], <s> and </s>: each text gets a couple of tokens beyond its own
FLOAT_BYTES = 4
# Training activations of a transformer layer per sequence, in fp32: 68·s·h + 10·a·s² bytes (Korthikanti et al.,
# "Reducing Activation Recomputation in Large Transformer Models", 2022: 34·s·h + 5·a·s² in fp16).
TRANSFORMER_BYTES_PER_TOKEN_AND_WIDTH = 68
TRANSFORMER_BYTES_PER_HEAD_AND_PAIR = 10
# A convolutional network keeps feature maps adding up to some tens of times its input for the backward pass
# (ResNet-50 at 224 px: ~25M floats an image against the input's 150k). Rough, and shown as such.
CONV_ACTIVATIONS_PER_INPUT_FLOAT = 100
SAFETENSORS_HEADER_LIMIT = 100 * MB


def expected_memory(dataset: Dataset, base: BaseModelRef, hp: Hyperparameters, budget_mb: int) -> dict[str, Any]:
    """The job spec's `expected_memory` for training `base` on `dataset`; a 422 saying how to fit if its decoded
    dataset would exceed `budget_mb`."""
    task = TaskType(dataset.task)
    text_bytes = dataset.size_bytes if task == TaskType.text_classification else None
    memory = estimate(task, dataset.num_examples, hp, model_shape(base.folder), text_bytes)
    check_budget(memory, task, dataset.num_examples, hp, budget_mb)
    return memory.as_spec(budget_mb)


def decoded_image_bytes(rows: int, image_size: int) -> int:
    """The uint8 tensor a worker keeps for `rows` images at `image_size` pixels square."""
    return rows * CHANNELS * image_size * image_size


@dataclass(frozen=True)
class ModelShape:
    """What a model folder's files say about its size, read cheaply (no weights loaded)."""

    parameters: int
    hidden_size: int | None = None  # transformers only
    layers: int | None = None
    heads: int | None = None
    positions: int | None = None  # text: the longest sequence it embeds
    patch_size: int | None = None  # vision transformers
    image_size: int | None = None  # the side its processor resizes to


@dataclass(frozen=True)
class MemoryEstimate:
    """A job's memory in a worker, in bytes; None where the API cannot know (a model not on its machine)."""

    data_cache: int
    weights: int | None
    training_state: int | None  # gradients and optimizer moments of the trained parameters
    activations: int | None  # one training batch, forward and backward (rough)
    detail: str  # how the data cache was counted, in words

    @property
    def total(self) -> int:
        return sum(part or 0 for part in (self.data_cache, self.weights, self.training_state, self.activations))

    def as_spec(self, budget_mb: int) -> dict[str, Any]:
        """The job spec's `expected_memory`: each part in MB (null: unknown), and the budget the data must fit."""

        def mb(value: int | None) -> float | None:
            return None if value is None else round(value / MB, 1)

        return {
            "total_mb": mb(self.total),
            "data_cache_mb": mb(self.data_cache),
            "weights_mb": mb(self.weights),
            "training_state_mb": mb(self.training_state),
            "activations_mb": mb(self.activations),
            "data_cache_budget_mb": budget_mb,
            "data_cache": self.detail,
        }


def estimate(
    task: TaskType | str,
    rows: int,
    hp: Hyperparameters,
    model: ModelShape | None = None,
    text_bytes: int | None = None,
) -> MemoryEstimate:
    """The memory a job of `rows` examples will take: its decoded data (every split), and when the model's shape is
    known its fp32 weights, gradients and optimizer state, and one batch's activations. `text_bytes` (the upload's
    size) bounds a text dataset's tokens: a token covers at least one byte of its text."""
    task = TaskType(task)
    if task == TaskType.image_classification:
        side = image_side(hp, model)
        data = decoded_image_bytes(rows, side)
        detail = f"{rows} images at {side}x{side} pixels, 3 bytes a pixel"
        sequence = None
    else:
        sequence = min(hp.max_length, model.positions) if model and model.positions else hp.max_length
        tokens = rows * sequence
        if text_bytes is not None:
            tokens = min(tokens, text_bytes + SPECIAL_TOKENS * rows)
        data = tokens * TOKEN_BYTES
        detail = f"{rows} texts of at most {sequence} tokens, {tokens} token ids at {TOKEN_BYTES} bytes"
    if model is None:
        return MemoryEstimate(data, None, None, None, detail)
    weights = model.parameters * FLOAT_BYTES
    # gradients plus AdamW's two moments (SGD: one momentum buffer); a frozen backbone trains only a small head, an
    # adapter (LoRA) a small share of the weights besides it
    frozen = hp.freeze == "backbone" or hp.adapter is not None
    per_weight = 0 if frozen else (3 if hp.optimizer == "adamw" else 2)
    return MemoryEstimate(data, weights, weights * per_weight, _activations(task, hp, model, sequence), detail)


def image_side(hp: Hyperparameters, model: ModelShape | None) -> int:
    """The side images are trained at: the spec's, else the model processor's, else the worker's default."""
    return hp.image_size or (model.image_size if model and model.image_size else None) or DEFAULT_IMAGE_SIZE


def _activations(task: TaskType, hp: Hyperparameters, model: ModelShape, sequence: int | None) -> int | None:
    """One micro-batch's activations kept for the backward pass (rough: a published formula for transformers, a
    multiple of the input for convolutional networks); with gradient accumulation a micro-batch is a part of a batch."""
    rows = (hp.batch_size or TASK_DEFAULTS[task]["batch_size"]) // hp.gradient_accumulation_steps
    if task == TaskType.image_classification:
        side = image_side(hp, model)
        if model.patch_size:
            sequence = (side // model.patch_size) ** 2 + 1
        else:
            return rows * CHANNELS * side * side * FLOAT_BYTES * CONV_ACTIVATIONS_PER_INPUT_FLOAT
    if not (sequence and model.hidden_size and model.layers and model.heads):
        return None
    per_layer = (
        TRANSFORMER_BYTES_PER_TOKEN_AND_WIDTH * sequence * model.hidden_size
        + TRANSFORMER_BYTES_PER_HEAD_AND_PAIR * model.heads * sequence * sequence
    )
    return rows * model.layers * per_layer


def check_budget(memory: MemoryEstimate, task: TaskType | str, rows: int, hp: Hyperparameters, budget_mb: int) -> None:
    """A 422 that says how to fit when the decoded dataset would take more than the budget."""
    budget = budget_mb * MB
    if memory.data_cache <= budget:
        return
    need = math.ceil(memory.data_cache / MB)
    per_row = memory.data_cache / max(rows, 1)
    fewer = f"train on at most {int(budget // per_row)} examples"
    if TaskType(task) == TaskType.image_classification:
        side = math.isqrt(budget // (max(rows, 1) * CHANNELS))
        smaller = f"lower image_size to {side} or less" if side >= 16 else "lower image_size"
    else:
        length = budget // (max(rows, 1) * TOKEN_BYTES)
        smaller = f"lower max_length to {length} or less" if length >= 8 else "lower max_length"
    raise InvalidInput(
        f"This job's decoded dataset would take about {need} MB ({memory.detail}), more than the {budget_mb} MB a "
        f"job may hold in a worker. To fit: {smaller}, {fewer}, or raise FINETUNE_JOB_MEMORY_BUDGET_MB on the "
        "service and its workers."
    )


def model_shape(folder: Path | None) -> ModelShape | None:
    """A model folder's parameter count (safetensors headers) and transformer shape (config.json); None if the
    folder is not on this machine or its weights are not in safetensors files."""
    if folder is None:
        return None
    parameters = sum(_safetensors_parameters(path) for path in sorted(Path(folder).glob("*.safetensors")))
    if not parameters:
        return None
    config = _read_json(Path(folder) / "config.json")

    def field(*names: str) -> int | None:
        value = next((config[n] for n in names if isinstance(config.get(n), int)), None)
        return value if value and value > 0 else None

    return ModelShape(
        parameters=parameters,
        hidden_size=field("hidden_size", "dim", "d_model"),
        layers=field("num_hidden_layers", "n_layers", "num_layers"),
        heads=field("num_attention_heads", "n_heads"),
        positions=field("max_position_embeddings"),
        patch_size=field("patch_size"),
        image_size=_processor_side(Path(folder), config),
    )


def _safetensors_parameters(path: Path) -> int:
    """How many numbers a .safetensors file holds, from its JSON header alone."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > SAFETENSORS_HEADER_LIMIT:
                return 0
            header = json.loads(f.read(length))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (OSError, ValueError, struct.error, KeyError, TypeError, AttributeError):
        return 0


def _processor_side(folder: Path, config: dict[str, Any]) -> int | None:
    """The side a model's processor resizes to: preprocessor_config.json's size, else a timm wrapper's input_size."""
    size = _read_json(folder / "preprocessor_config.json").get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    if isinstance(size, int) and size > 0:
        return size
    pretrained_cfg = config.get("pretrained_cfg")
    input_size = pretrained_cfg.get("input_size") if isinstance(pretrained_cfg, dict) else None
    if isinstance(input_size, list) and input_size and isinstance(input_size[-1], int):
        return input_size[-1]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
