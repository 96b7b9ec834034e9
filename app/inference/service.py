"""Prediction: resolve the model (alias looked up per request), preprocess, a (batched) forward pass, top-k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.errors import InvalidInput
from app.inference.batcher import BatchResult
from app.inference.cache import LoadedModel, ModelCache
from app.registry.service import resolve_model
from app.tasktypes.types import TaskType

MAX_INPUTS = 256


@dataclass
class PreparedRequest:
    """A request's inputs, encoded for the model that will answer it."""

    model_id: str
    loaded: LoadedModel
    encoded: Any
    count: int

    def submit(self, top_k: int) -> Any:
        """Queue the inputs on the model's batcher; an awaitable of their BatchResult (call on the event loop)."""
        assert self.loaded.batcher is not None
        return self.loaded.batcher.submit(self.encoded, self.count, top_k)


def prepare(
    session: Session,
    store: ArtifactStore,
    cache: ModelCache,
    team_id: str,
    model_ref: str | None,
    texts: list[str] | None,
    images: list[bytes] | None,
) -> PreparedRequest:
    """Resolve the model, check and encode the inputs, load the model if needed (blocking: run in a thread)."""
    registered = resolve_model(session, team_id, model_ref)
    model_id, task, storage_key = registered.id, TaskType(registered.task), registered.storage_key
    # End the read transaction: the pooled connection is not held while a model loads or inputs are decoded.
    session.commit()
    inputs = _check_inputs(task, texts, images)
    loaded = cache.get(model_id, lambda: store.local_dir(storage_key), team_id)
    return PreparedRequest(model_id, loaded, loaded.encode(inputs), len(inputs))


def answer(prepared: PreparedRequest, result: BatchResult) -> dict:
    """The response body: top-k labels with probabilities for each input, and which model answered."""
    labels = prepared.loaded.prep.labels
    predictions = [
        [{"label": labels[i], "score": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(result.scores, result.indices, strict=True)
    ]
    return {"model_id": prepared.model_id, "predictions": predictions}


def _check_inputs(task: TaskType, texts: list[str] | None, images: list[bytes] | None) -> list:
    if task == TaskType.text_classification:
        if not texts:
            raise InvalidInput("This model classifies text: send 'texts': [\"...\"].")
        inputs: list = texts
    else:
        if not images:
            raise InvalidInput(
                "This model classifies images: send image files (multipart 'files') or 'images' as base64."
            )
        inputs = images
    if len(inputs) > MAX_INPUTS:
        raise InvalidInput(f"At most {MAX_INPUTS} inputs per request; split the request.")
    return inputs
