"""ML task types: a plain dict from TaskType to what training and serving need for that task type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from app.tasktypes import image, text
from app.tasktypes.common import Preprocessing
from app.tasktypes.types import TaskType


@dataclass(frozen=True)
class TaskSpec:
    """How one task loads its model, preprocesses once, and builds a batch."""

    load_model: Callable[[Path, list[str], float | None, Preprocessing], tuple[PreTrainedModel, set[str], list[str]]]
    load_processor: Callable[[Path], Any]
    make_preprocessing: Callable[[Any, list[str], Any], Preprocessing]
    encode: Callable[[Any, list[Any], Preprocessing], Any]
    collate: Callable[[Any, Preprocessing, Any], dict[str, torch.Tensor]]
    select: Callable[[Any, Sequence[int]], Any]
    record_input: Callable[[Any], Any]
    save_processor: Callable[[Any, Path, Preprocessing], None]


def _select_list(encoded: list, indices: Sequence[int]) -> list:
    return [encoded[i] for i in indices]


def _select_tensor(encoded: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    return encoded[torch.as_tensor(indices, dtype=torch.long)]


TASKS: dict[TaskType, TaskSpec] = {
    TaskType.text_classification: TaskSpec(
        load_model=text.load_model,
        load_processor=text.load_processor,
        make_preprocessing=text.make_preprocessing,
        encode=text.encode,
        collate=lambda processor, prep, batch: text.collate(processor, batch),
        select=_select_list,
        record_input=lambda record: record["text"],
        save_processor=lambda processor, folder, prep: processor.save_pretrained(str(folder)),
    ),
    TaskType.image_classification: TaskSpec(
        load_model=image.load_model,
        load_processor=image.load_processor,
        make_preprocessing=image.make_preprocessing,
        encode=image.encode,
        collate=lambda processor, prep, batch: image.collate(prep, batch),
        select=_select_tensor,
        record_input=lambda record: record["image"],
        save_processor=image.save_processor,
    ),
}


def task_spec(task: str | TaskType) -> TaskSpec:
    return TASKS[TaskType(task)]
