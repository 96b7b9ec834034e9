"""Prediction: resolve the model (alias routes kept in process for the lookup ttl), preprocess, a (batched) forward
pass, top-k; a shadow model answers a copy afterwards."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.artifacts.layout import runtime_key
from app.artifacts.store import ArtifactStore
from app.errors import AppError, InvalidInput
from app.image_files import ImageRefused, image_pixels, open_image
from app.inference.batcher import BatchResult
from app.inference.cache import LoadedModel, ModelCache
from app.inference.runtimes import TORCH
from app.inference.traffic import ROUTE, SHADOW, TrafficCounters
from app.input_limits import InputLimits
from app.registry.routes import Routes, ServedModel
from app.registry.service import DEFAULT_ALIAS, resolve_routes
from app.tasktypes.types import TaskType
from app.ttl_cache import TtlCache

log = logging.getLogger(__name__)


class NeedsThread(Exception):
    """A lookup missed the in-process caches, or the inputs need decoding: prepare again in a worker thread."""


@dataclass
class PreparedRequest:
    """A request's inputs, encoded for the model that will answer it."""

    model_id: str
    loaded: LoadedModel
    encoded: Any
    count: int
    temperature: float | None = None  # calibrated: the model's fitted temperature
    team_id: str = ""
    routes: Routes | None = None
    inputs: list | None = None  # as sent (texts, or image bytes): what a shadow model reads

    def submit(self, top_k: int) -> Any:
        """Queue the inputs on the model's batcher; an awaitable of their BatchResult (call on the event loop)."""
        assert self.loaded.batcher is not None
        return self.loaded.batcher.submit(self.encoded, self.count, top_k, self.temperature or 1.0)


def routes_key(team_id: str, ref: str | None) -> tuple[str, str]:
    """The routes cache's key of a team's model reference (a model id or an alias; none: the default alias)."""
    return (team_id, ref or DEFAULT_ALIAS)


@dataclass
class Serving:
    """One API process's serving state: loaded models, the routes it trusts for `routes.ttl`, the traffic counts."""

    store: ArtifactStore
    cache: ModelCache
    routes: TtlCache[Routes]
    traffic: TrafficCounters
    _warming: set[tuple[str, str]] = field(default_factory=set)
    _warming_lock: threading.Lock = field(default_factory=threading.Lock)

    def forget_team(self, team_id: str) -> None:
        """This process sees a team's moved alias or deleted model now (the others within the ttl)."""
        self.routes.discard(lambda key: isinstance(key, tuple) and key[0] == team_id)

    def warm(self, team_id: str, model: ServedModel) -> LoadedModel:
        """Load and warm a model in its runtime before it takes traffic (blocking)."""
        return self.cache.warm(model.id, self._files(model), team_id, model.runtime, self._runtime_files(model))

    def _files(self, model: ServedModel) -> Callable[[], Path]:
        return lambda: self.store.local_dir(model.storage_key)

    def _runtime_files(self, model: ServedModel) -> Callable[[], Path] | None:
        """The converted model's files (app/inference/conversion.py), for a runtime other than torch."""
        if model.runtime == TORCH:
            return None
        return lambda: self.store.local_dir(runtime_key(model.id, model.runtime))

    def resolve(self, session: Session | None, team_id: str, ref: str | None) -> Routes:
        """The routes of a model reference: from memory, else (with a session) from the database."""
        key = routes_key(team_id, ref)
        routes = self.routes.get(key)
        if routes is None:
            if session is None:
                raise NeedsThread
            routes = self._keep_warm(key, team_id, resolve_routes(session, team_id, ref))
            self.routes.put(key, routes)
        return routes

    def refresh(self, session: Session, team_id: str, ref: str | None, token: int) -> None:
        """Resolve a model reference again (refresh ahead, app/ttl_cache.py); gone, it is forgotten and its next
        request answers why."""
        key = routes_key(team_id, ref)
        try:
            routes: Routes | None = self._keep_warm(key, team_id, resolve_routes(session, team_id, ref))
        except AppError:
            routes = None
        self.routes.refreshed(key, routes, token)

    def _keep_warm(self, key: tuple[str, str], team_id: str, routes: Routes) -> Routes:
        """The routes to serve now: `routes`, unless they name a model this process has not loaded while the previous
        ones are all loaded; then the previous keep serving and the new models load and warm in a background thread,
        their routes taking over once warm (how an alias moved through another API process swaps here)."""
        previous = self.routes.stale(key)
        cold = [m for m in routes.models() if self.cache.peek(m.id, m.runtime) is None]
        if not cold or previous is None or previous == routes:
            return routes
        if any(self.cache.peek(m.id, m.runtime) is None for m in previous.models()):
            return routes
        with self._warming_lock:
            if key in self._warming:
                return previous
            self._warming.add(key)
        threading.Thread(target=self._warm_then_route, args=(key, team_id, routes, cold), daemon=True).start()
        return previous

    def _warm_then_route(self, key: tuple[str, str], team_id: str, routes: Routes, cold: list[ServedModel]) -> None:
        try:
            for model in cold:
                self.warm(team_id, model)
            self.routes.put(key, routes)
        except Exception:  # the previous routes keep serving; the next refresh tries again
            log.warning("could not load the new models of %s; the previous ones keep serving", key, exc_info=True)
        finally:
            with self._warming_lock:
                self._warming.discard(key)

    def loaded(self, team_id: str, model: ServedModel, may_block: bool) -> LoadedModel:
        loaded = self.cache.peek(model.id, model.runtime)
        if loaded is None:
            if not may_block:
                raise NeedsThread
            loaded = self.cache.get(model.id, self._files(model), team_id, model.runtime, self._runtime_files(model))
        return loaded


def prepare(
    serving: Serving,
    session: Session | None,
    team_id: str,
    model_ref: str | None,
    texts: list[str] | None,
    images: list[bytes] | None,
    limits: InputLimits,
    routing_key: str | None = None,
    calibrated: bool = False,
) -> PreparedRequest:
    """Check the inputs against `limits` (before any lookup, load or decode), resolve the model, encode the
    inputs, load the model if needed; `calibrated`: scores with its temperature. Without a session nothing blocks:
    NeedsThread when something would."""
    if images and session is None:
        raise NeedsThread  # image headers are read and pixels decoded: not on the event loop
    check_inputs(texts, images, limits)
    routes = serving.resolve(session, team_id, model_ref)
    model = routes.pick(routing_key)
    if session is not None:
        # End the read transaction: the pooled connection is not held while a model loads or inputs are decoded.
        session.commit()
    inputs = _inputs_for(TaskType(model.task), texts, images)
    loaded = serving.loaded(team_id, model, may_block=session is not None)
    if calibrated and loaded.temperature is None:
        raise InvalidInput(
            f"Model '{model.id}' has no fitted temperature (it was trained before calibration existed, or without a "
            "validation split), so it cannot answer calibrated scores; send 'calibrated': false, or retrain it."
        )
    temperature = loaded.temperature if calibrated else None
    return PreparedRequest(model.id, loaded, loaded.encode(inputs), len(inputs), temperature, team_id, routes, inputs)


def record(serving: Serving, prepared: PreparedRequest, latency_s: float, error: bool = False) -> None:
    """Count a request served through an alias, and send its copy to the alias's shadow (if any) in the background."""
    routes = prepared.routes
    if routes is None or routes.alias is None:
        return
    serving.traffic.add(
        prepared.team_id,
        routes.alias,
        prepared.model_id,
        ROUTE,
        inputs=prepared.count,
        latency_ms=latency_s * 1000,
        error=error,
    )


async def shadow(serving: Serving, prepared: PreparedRequest, served: BatchResult) -> None:
    """The shadow model answers the same inputs; its top labels are compared with the served ones and counted, and
    nothing of it reaches the client (run as a task after the answer is sent; it never raises)."""
    routes = prepared.routes
    if routes is None or routes.alias is None or routes.shadow is None or prepared.inputs is None:
        return
    model, alias = routes.shadow, routes.alias
    try:
        peeked = serving.cache.peek(model.id, model.runtime)
        if peeked is None or not peeked.reads_text:  # loading and image decoding block: a worker thread
            loaded, encoded = await asyncio.to_thread(_load_and_encode, serving, prepared.team_id, model, prepared)
        else:
            loaded, encoded = peeked, peeked.encode(prepared.inputs)
        started = time.monotonic()
        assert loaded.batcher is not None
        result = await loaded.batcher.submit(encoded, prepared.count, 1)
        latency_ms = (time.monotonic() - started) * 1000
    except Exception:
        log.warning("shadow model %s failed on alias %s", model.id, alias, exc_info=True)
        serving.traffic.add(prepared.team_id, alias, model.id, SHADOW, inputs=prepared.count, error=True)
        return
    served_labels = [prepared.loaded.prep.labels[ids[0]] for ids in served.indices]
    shadow_labels = [loaded.prep.labels[ids[0]] for ids in result.indices]
    agreed = sum(a == b for a, b in zip(served_labels, shadow_labels, strict=True))
    serving.traffic.add(
        prepared.team_id,
        alias,
        model.id,
        SHADOW,
        inputs=prepared.count,
        latency_ms=latency_ms,
        compared=prepared.count,
        agreed=agreed,
    )


def _load_and_encode(
    serving: Serving, team_id: str, model: ServedModel, prepared: PreparedRequest
) -> tuple[LoadedModel, Any]:
    assert prepared.inputs is not None
    loaded = serving.loaded(team_id, model, may_block=True)
    return loaded, loaded.encode(prepared.inputs)


def answer(prepared: PreparedRequest, result: BatchResult) -> dict:
    """The response body: top-k labels with probabilities for each input, which model answered and in which runtime,
    and the temperature that scaled its logits when calibrated scores were asked for."""
    labels = prepared.loaded.prep.labels
    predictions = [
        [{"label": labels[i], "score": round(p, 6)} for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(result.scores, result.indices, strict=True)
    ]
    return {
        "model_id": prepared.model_id,
        "runtime": prepared.loaded.runtime,
        "predictions": predictions,
        "temperature": prepared.temperature,  # null unless calibrated scores were asked for
    }


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
