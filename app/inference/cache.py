"""Served models, loaded once and kept keyed by immutable model id.

When the cache is full, the model to unload is the least recently used one of the team holding the most slots, and a
team that already holds as many as any other unloads its own: one team cycling through many models cannot push the
others' hot models out, only down to an even share."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

from app.errors import InvalidInput
from app.inference.batcher import Batcher, ForwardThreads, PreparingCounter
from app.inference.memory import collect_released, freeze_long_lived
from app.inference.passing_thread import in_passing_thread
from app.inference.runtimes import (
    INT8,
    INT8_ONNX_FILE,
    ONNX,
    ONNX_FILE,
    TORCH,
    Forward,
    onnx_forward,
    quantize_int8,
    torch_forward,
)
from app.observability.metrics import observe_model_load
from app.tasktypes.calibration import load_temperature
from app.tasktypes.common import Preprocessing
from app.tasktypes.pooling import apply_saved_pooling
from app.tasktypes.specs import TaskSpec, task_spec
from app.tasktypes.types import TaskType

AUTO_CLASSES = {
    TaskType.text_classification: AutoModelForSequenceClassification,
    TaskType.image_classification: AutoModelForImageClassification,
}
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_MS = 5.0


def default_forward_threads() -> int:
    """All the cores this process may use: fastest when the API has the machine to itself (see batcher.py)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def served_key(model_id: str, runtime: str = TORCH) -> str:
    """The cache's key of a model in a runtime: the same model served by two aliases in two runtimes is two entries."""
    return model_id if runtime == TORCH else f"{model_id}@{runtime}"


@dataclass
class LoadedModel:
    model_id: str
    model: torch.nn.Module | None  # None when another runtime (onnx) holds the weights
    processor: Any
    prep: Preprocessing
    spec: TaskSpec
    temperature: float | None = None  # fitted on the validation split (calibration.json); None: the model has none
    batcher: Batcher | None = None
    runtime: str = TORCH
    run: Forward | None = None  # a collated batch -> logits (default: the torch model's forward)
    # a fast tokenizer is not safe to call from two threads at once (its padding settings are shared state)
    _tokenizing: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.run is None:
            assert self.model is not None, "a model without torch weights needs its runtime's forward"
            self.run = torch_forward(self.model)

    @property
    def reads_text(self) -> bool:
        return self.prep.task == TaskType.text_classification

    def encode(self, inputs: list) -> Any:
        """Inputs ready to be merged with other requests': texts as they are (a merged batch is tokenized in one
        call in `forward`), images decoded into uint8 pixels (blocking: run in a thread)."""
        if self.reads_text:
            return list(inputs)
        try:
            return self.spec.encode(self.processor, inputs, self.prep)
        except Exception as exc:  # undecodable image and the like
            raise InvalidInput(f"Could not read the inputs: {exc}. Send JPEG/PNG images or UTF-8 text.") from exc

    def forward(self, encoded: Any) -> torch.Tensor:
        """Float logits for a batch of encoded inputs (texts pad to the batch's longest); the batcher scores them.

        Batcher workers call this concurrently: inference on shared read-only weights needs no lock."""
        assert self.run is not None
        return self.run(self.collate(encoded)).float()

    def collate(self, encoded: Any) -> dict[str, torch.Tensor]:
        """The model's input tensors for a batch of encoded inputs (what every runtime reads)."""
        return self._tokenize(encoded) if self.reads_text else self.spec.collate(self.processor, self.prep, encoded)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """A whole merged batch in one call of the (fast, Rust) tokenizer, padded to its longest text."""
        with self._tokenizing:
            tokens = self.processor(
                texts, truncation=True, max_length=self.prep.max_length, padding=True, return_tensors="pt"
            )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def warm(self) -> None:
        """Two forward passes of dummy inputs, so the first real request finds the weights paged in and the kernels
        ready (a freshly loaded model's first forward can take many times a steady one). They run on the batcher's
        own thread, where the requests' forwards will: a forward in another thread (this one) leaves that thread's
        math-library threads behind, and the batcher's single requests then took 2.4x as long (4.7 against 11.5 ms,
        MiniLM-L6, measured in process)."""
        if self.reads_text:
            samples: Any = ["warm up", " ".join(["warm up the model before its traffic"] * 8)]
        else:
            size = self.prep.image_size or 224
            samples = torch.zeros(2, 3, size, size, dtype=torch.uint8)
        batcher = self.batcher
        if batcher is None:
            for _ in range(2):
                self.forward(samples)
            return

        async def through_the_batcher() -> None:
            for _ in range(2):
                await batcher.submit(samples, len(samples), 1)

        asyncio.run(through_the_batcher())  # a blocking call: never on an event loop's thread


def load_served_model(
    model_id: str, folder: Path, runtime: str = TORCH, runtime_folder: Path | None = None, threads: int | None = None
) -> LoadedModel:
    """A fine-tuned model folder ready for inference (eval mode) in `runtime`: torch as trained, int8 quantized now,
    onnx from the exported graph in `runtime_folder` on `threads` ONNX Runtime threads (app/inference/runtimes.py)."""
    prep = Preprocessing.load(folder)
    task = TaskType(prep.task)
    spec = task_spec(task)
    processor, temperature = spec.load_processor(folder), load_temperature(folder)
    if runtime == ONNX:
        assert runtime_folder is not None, "an onnx model loads from its exported graph"
        run = onnx_forward(runtime_folder / ONNX_FILE, threads or default_forward_threads())
        return LoadedModel(model_id, None, processor, prep, spec, temperature, runtime=runtime, run=run)
    if runtime == INT8 and runtime_folder is not None and (runtime_folder / INT8_ONNX_FILE).is_file():
        run = onnx_forward(runtime_folder / INT8_ONNX_FILE, threads or default_forward_threads())
        return LoadedModel(model_id, None, processor, prep, spec, temperature, runtime=runtime, run=run)
    model = apply_saved_pooling(AUTO_CLASSES[task].from_pretrained(str(folder), trust_remote_code=False).eval())
    if runtime == INT8:
        model = quantize_int8(model)
    return LoadedModel(model_id, model, processor, prep, spec, temperature, runtime=runtime)


class ModelCache:
    """At most `size` models in memory, each with its batcher; loading happens outside the cache lock."""

    def __init__(
        self,
        size: int,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        """`workers` forward passes may run at once (on threads all models share), each on `threads` torch threads
        (default: all cores); a batch merges up to `max_batch` inputs, waiting at most `max_wait_ms` for company."""
        self.size = size
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.workers = workers
        self.threads = threads or default_forward_threads()
        self.preparing = PreparingCounter()
        self.forward_threads = ForwardThreads(workers, self.threads)  # every model's forward passes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._owner: dict[str, str] = {}  # model id -> the team that asked for it
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(
        self,
        model_id: str,
        folder_for: Any,
        team_id: str = "",
        runtime: str = TORCH,
        runtime_folder_for: Callable[[], Path] | None = None,
        ahead: bool = False,
    ) -> LoadedModel:
        """The loaded model `model_id` (one of team `team_id`'s) in `runtime`, loading it from `folder_for()` (and
        the runtime's files from `runtime_folder_for()`) on first use; `ahead`: loaded before any request needs it
        (counted apart from the loads a request waits for)."""
        key = served_key(model_id, runtime)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            runtime_folder = runtime_folder_for() if runtime_folder_for is not None else None
            # in a thread that ends with it: quantizing for int8 runs torch's math, which in a long-lived thread
            # slows the forward threads (app/inference/passing_thread.py)
            loaded = in_passing_thread(load_served_model, model_id, folder_for(), runtime, runtime_folder, self.threads)
            observe_model_load(ahead)
            loaded.batcher = Batcher(
                _weak_forward(loaded),  # the batcher must not keep its model alive: no cycle to collect
                max_batch=self.max_batch,
                max_wait_s=self.max_wait_s,
                others_preparing=self.preparing.busy,
                name=f"batcher-{model_id[:8]}-{runtime}",
                shared=self.forward_threads,
            )
            freeze_long_lived()  # the model's objects stay out of the collections requests trigger
            evicted = []
            with self._lock:
                self._models[key] = loaded
                self._owner[key] = team_id
                while len(self._models) > self.size:
                    victim = self._victim(team_id, key)
                    evicted.append(self._models.pop(victim))
                    self._owner.pop(victim, None)
                self._loading.pop(key, None)
            self._release(evicted)
            return loaded

    def _victim(self, requester: str, loading: str) -> str:
        """The model to unload (see the module docstring); called with the lock held."""
        held = Counter(self._owner[m] for m in self._models)
        most = max(held.values())
        if held[requester] >= most:
            own = [m for m in self._models if self._owner[m] == requester and m != loading]
            if own:
                return own[0]  # least recently used first
        return next(m for m in self._models if held[self._owner[m]] == most and m != loading)

    def peek(self, model_id: str, runtime: str = TORCH) -> LoadedModel | None:
        """The model if it is loaded in `runtime` (never loads: safe on the event loop)."""
        key = served_key(model_id, runtime)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
            return loaded

    def warm(
        self,
        model_id: str,
        folder_for: Callable[[], Path],
        team_id: str = "",
        runtime: str = TORCH,
        runtime_folder_for: Callable[[], Path] | None = None,
    ) -> LoadedModel:
        """Load the model if needed and run it once (blocking); raises whatever loading raised (a corrupt file)."""
        loaded = self.get(model_id, folder_for, team_id, runtime, runtime_folder_for, ahead=True)
        loaded.warm()
        return loaded

    def loaded_ids(self) -> list[str]:
        """Keys of the models in memory (a model id, `id@runtime` for another runtime), least recently used first."""
        with self._lock:
            return list(self._models)

    def discard(self, model_id: str) -> None:
        """Unload a deleted model (in every runtime) now rather than when it would have aged out."""
        with self._lock:
            keys = [k for k, loaded in self._models.items() if loaded.model_id == model_id]
            gone = [self._models.pop(k) for k in keys]
            for k in keys:
                self._owner.pop(k, None)
        self._release(gone)

    def close(self) -> None:
        """Stop the forward threads once the pending requests are served (app shutdown)."""
        self.forward_threads.close()

    @staticmethod
    def _release(models: list[LoadedModel]) -> None:
        """Unloaded models: their batchers end once idle, and each model is freed by reference counting when the
        last request holding it ends (its batcher holds it weakly). One still alive now may sit in a cycle among
        frozen objects, which no collection would visit: then one full collection (app/inference/memory.py)."""
        if not models:
            return
        _close_batchers(models)
        left = [weakref.ref(loaded) for loaded in models]
        models.clear()
        if any(ref() is not None for ref in left):
            collect_released()


def _weak_forward(loaded: LoadedModel) -> Callable[[Any], torch.Tensor]:
    """`loaded.forward` without a reference to `loaded`: a request whose inputs wait in the batcher holds the model
    (PreparedRequest.loaded), so it is alive whenever its batcher runs."""
    method, model_id = weakref.WeakMethod(loaded.forward), loaded.model_id

    def forward(encoded: Any) -> torch.Tensor:
        bound = method()
        if bound is None:
            raise RuntimeError(f"model {model_id} was unloaded while a request waited for it")
        return bound(encoded)

    return forward


def _close_batchers(models: list[LoadedModel]) -> None:
    """(A function of its own, so that no loop variable of the caller still holds a model while it collects.)"""
    for loaded in models:
        if loaded.batcher is not None:
            loaded.batcher.close()
