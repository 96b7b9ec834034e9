"""Prediction: resolve the model (alias looked up per request), preprocess, one forward pass, top-k."""

from __future__ import annotations

import torch
from sqlalchemy.orm import Session

from app.errors import InvalidInput
from app.inference.cache import LoadedModel, ModelCache
from app.models.service import resolve_model
from app.storage import ArtifactStore
from app.tasks.types import TaskType

MAX_INPUTS = 256


def predict(
    session: Session,
    store: ArtifactStore,
    cache: ModelCache,
    team_id: str,
    model_ref: str | None,
    texts: list[str] | None,
    images: list[bytes] | None,
    top_k: int,
) -> dict:
    """Top-k labels with probabilities for each input, and which model answered."""
    registered = resolve_model(session, team_id, model_ref)
    inputs = _check_inputs(TaskType(registered.task), texts, images)
    loaded = cache.get(registered.id, lambda: store.local_dir(registered.storage_key))
    probabilities = _forward(loaded, inputs)
    k = min(top_k, probabilities.shape[1])
    top = probabilities.topk(k, dim=1)
    labels = loaded.prep.labels
    predictions = [
        [{"label": labels[i], "score": round(float(p), 6)} for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    return {"model_id": registered.id, "predictions": predictions}


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


def _forward(loaded: LoadedModel, inputs: list) -> torch.Tensor:
    try:
        encoded = loaded.spec.encode(loaded.processor, inputs, loaded.prep)
    except Exception as exc:  # noqa: BLE001  (undecodable image and the like)
        raise InvalidInput(f"Could not read the inputs: {exc}. Send JPEG/PNG images or UTF-8 text.") from exc
    batch = loaded.spec.collate(loaded.processor, loaded.prep, encoded)
    with loaded.lock, torch.inference_mode():
        logits = loaded.model(**batch).logits
    return logits.float().softmax(dim=-1)
