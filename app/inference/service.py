"""Prediction: resolve the model (alias looked up per request), preprocess, a (batched) forward pass, top-k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.errors import InvalidInput
from app.image_files import ImageRefused, image_pixels, open_image
from app.inference.batcher import BatchResult
from app.inference.cache import LoadedModel, ModelCache
from app.input_limits import InputLimits
from app.registry.service import resolve_model
from app.tasktypes.types import TaskType


@dataclass
class PreparedRequest:
    """A request's inputs, encoded for the model that will answer it."""

    model_id: str
    loaded: LoadedModel
    encoded: Any
    count: int
    temperature: float | None = None  # calibrated: the model's fitted temperature

    def submit(self, top_k: int) -> Any:
        """Queue the inputs on the model's batcher; an awaitable of their BatchResult (call on the event loop)."""
        assert self.loaded.batcher is not None
        return self.loaded.batcher.submit(self.encoded, self.count, top_k, self.temperature or 1.0)


def prepare(
    session: Session,
    store: ArtifactStore,
    cache: ModelCache,
    team_id: str,
    model_ref: str | None,
    texts: list[str] | None,
    images: list[bytes] | None,
    limits: InputLimits,
    calibrated: bool = False,
) -> PreparedRequest:
    """Check the inputs against `limits` (before any lookup, load or decode), resolve the model, encode the
    inputs, load the model if needed (blocking: run in a thread); `calibrated`: scores with its temperature."""
    check_inputs(texts, images, limits)
    registered = resolve_model(session, team_id, model_ref)
    model_id, task, storage_key = registered.id, TaskType(registered.task), registered.storage_key
    # End the read transaction: the pooled connection is not held while a model loads or inputs are decoded.
    session.commit()
    inputs = _inputs_for(task, texts, images)
    loaded = cache.get(model_id, lambda: store.local_dir(storage_key), team_id)
    if calibrated and loaded.temperature is None:
        raise InvalidInput(
            f"Model '{model_id}' has no fitted temperature (it was trained before calibration existed, or without a "
            "validation split), so it cannot answer calibrated scores; send 'calibrated': false, or retrain it."
        )
    temperature = loaded.temperature if calibrated else None
    return PreparedRequest(model_id, loaded, loaded.encode(inputs), len(inputs), temperature)


def answer(prepared: PreparedRequest, result: BatchResult) -> dict:
    """The response body: top-k labels with probabilities for each input, which model answered, and the
    temperature that scaled its logits when calibrated scores were asked for."""
    labels = prepared.loaded.prep.labels
    predictions = [
        [{"label": labels[i], "score": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(result.scores, result.indices, strict=True)
    ]
    body: dict[str, Any] = {"model_id": prepared.model_id, "predictions": predictions}
    if prepared.temperature is not None:
        body["temperature"] = prepared.temperature
    return body


def check_inputs(texts: list[str] | None, images: list[bytes] | None, limits: InputLimits) -> None:
    """The caps, from lengths and image headers alone: how many inputs, each text's length and all the texts'
    together, each image's format and pixels and all the images' together. Nothing is tokenized or decoded here."""
    for inputs in (texts, images):
        if inputs and len(inputs) > limits.predict_max_inputs:
            raise InvalidInput(
                f"{len(inputs)} inputs; at most {limits.predict_max_inputs} per request "
                "(FINETUNE_PREDICT_MAX_INPUTS); split the request"
            )
    chars = 0
    for i, text in enumerate(texts or []):
        if len(text) > limits.max_text_chars:
            raise InvalidInput(
                f"texts[{i}] has {len(text):,} characters; the limit is {limits.max_text_chars:,} per text "
                "(FINETUNE_MAX_TEXT_CHARS); shorten it (the model reads only its first tokens anyway)"
            )
        chars += len(text)
        if chars > limits.predict_max_chars:
            raise InvalidInput(
                f"at texts[{i}], the texts hold more than {limits.predict_max_chars:,} characters in all "
                "(FINETUNE_PREDICT_MAX_CHARS); shorten them or split the request"
            )
    budget = limits.predict_max_megapixels * 1_000_000
    for i, data in enumerate(images or []):
        try:
            with open_image(data, max_pixels=limits.max_image_pixels) as img:
                budget -= image_pixels(img)
        except ImageRefused as exc:
            raise InvalidInput(f"images[{i}] {exc.reason}") from exc
        if budget < 0:
            raise InvalidInput(
                f"at images[{i}], the images hold more than {limits.predict_max_megapixels:,} megapixels in all "
                "(FINETUNE_PREDICT_MAX_MEGAPIXELS); downscale them or split the request"
            )


def _inputs_for(task: TaskType, texts: list[str] | None, images: list[bytes] | None) -> list:
    """The inputs the model's task reads (image bytes are decoded one at a time when encoded)."""
    if task == TaskType.text_classification:
        if not texts:
            raise InvalidInput("This model classifies text: send 'texts': [\"...\"].")
        return texts
    if not images:
        raise InvalidInput("This model classifies images: send image files (multipart 'files') or 'images' as base64.")
    return images
