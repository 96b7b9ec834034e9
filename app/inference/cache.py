"""Served models, loaded once and kept (least recently used out) keyed by immutable model id."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from app.tasks.common import Preprocessing
from app.tasks.registry import TaskSpec, task_spec
from app.tasks.types import TaskType

AUTO_CLASSES = {
    TaskType.text_classification: AutoModelForSequenceClassification,
    TaskType.image_classification: AutoModelForImageClassification,
}


@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module
    processor: Any
    prep: Preprocessing
    spec: TaskSpec
    lock: threading.Lock


def load_served_model(model_id: str, folder: Path) -> LoadedModel:
    """A fine-tuned model folder ready for inference (eval mode)."""
    prep = Preprocessing.load(folder)
    task = TaskType(prep.task)
    spec = task_spec(task)
    model = AUTO_CLASSES[task].from_pretrained(str(folder), trust_remote_code=False).eval()
    return LoadedModel(model_id, model, spec.load_processor(folder), prep, spec, threading.Lock())


class ModelCache:
    """At most `size` models in memory; loading happens outside the cache lock."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str, folder_for: Any) -> LoadedModel:
        """The loaded model `model_id`, loading it from `folder_for()` on first use."""
        with self._lock:
            if model_id in self._models:
                self._models.move_to_end(model_id)
                return self._models[model_id]
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                if model_id in self._models:
                    return self._models[model_id]
            loaded = load_served_model(model_id, folder_for())
            with self._lock:
                self._models[model_id] = loaded
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
                self._loading.pop(model_id, None)
            return loaded
