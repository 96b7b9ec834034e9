"""POST /predict: JSON (texts, or base64 images) or multipart (image files)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import (
    authenticate_for_predict,
    bearer,
    bearer_key,
    client_address,
    recent_predict_caller,
    refresh_predict_caller,
)
from app.errors import InvalidInput
from app.inference import service
from app.input_limits import InputLimits
from app.teams.scopes import Scope

log = logging.getLogger(__name__)
router = APIRouter(tags=["predict"])
# Only the bearer header is a dependency: what needs the database happens in the handler's one worker-thread hop, and
# nothing does when the key, the routes and the model are in memory.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
_background: set[asyncio.Task] = set()  # shadow answers and lookup refreshes under way
# A body parsed on the event loop is small (a few texts); a larger one is parsed in a worker thread.
IN_MEMORY_BODY_BYTES = 64 * 1024


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(
        None, max_length=300, description="a model id or an alias; default: the 'production' alias"
    )
    texts: list[str] | None = None
    images: list[str] | None = Field(None, description="base64-encoded image files")
    top_k: int = Field(1, ge=1, le=1000)
    calibrated: bool = Field(
        False,
        description="scores from softmax(logits / T), T the temperature fitted on the model's validation split "
        "(its report's calibration); the predicted labels are the same",
    )
    routing_key: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="when the alias splits traffic between models: requests with the same key land on the same model "
        "(a user or session id); without one, each request is drawn by the weights",
    )


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    runtime: str = Field(description="how the model ran: torch, onnx or int8 (the alias's runtime)")
    predictions: list[list[Prediction]]
    temperature: float | None = Field(None, description="the temperature applied (calibrated requests only)")


def _decode_base64(images: list[str]) -> list[bytes]:
    decoded = []
    for i, item in enumerate(images):
        try:
            decoded.append(base64.b64decode(item.split(",", 1)[-1], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"images[{i}] is not valid base64.") from exc
    return decoded


def _parse(raw: bytes | tuple[dict, list[bytes]]) -> tuple[PredictRequest, list[bytes] | None]:
    """The request and its images: a JSON body, or multipart fields and files."""
    if isinstance(raw, tuple):
        fields, files = raw
        return PredictRequest.model_validate(fields), files
    body = PredictRequest.model_validate_json(raw)
    return body, (_decode_base64(body.images) if body.images else None)


async def _read(request: Request) -> bytes | tuple[dict, list[bytes]]:
    """The raw JSON body, or a multipart form's 'model', 'top_k', 'calibrated' and 'routing_key' fields and its 'files'."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = [await f.read() for f in form.getlist("files") if hasattr(f, "read")]
        fields = ("model", "top_k", "calibrated", "routing_key")
        return {k: form.get(k) for k in fields if form.get(k) not in (None, "")}, files
    return await request.body()


def _prepare(
    request: Request, team_id: str, raw: bytes | tuple[dict, list[bytes]], session: Session | None
) -> tuple[service.PreparedRequest, PredictRequest]:
    if session is None and not isinstance(raw, tuple) and b'"images"' in raw:
        raise service.NeedsThread  # base64 to decode: not on the event loop
    body, images = _parse(raw)
    prepared = service.prepare(
        request.app.state.serving,
        session,
        team_id,
        body.model,
        body.texts,
        images,
        InputLimits.from_settings(request.app.state.settings),
        body.routing_key,
        body.calibrated,
    )
    return prepared, body


def _prepare_in_memory(
    request: Request, key: str, raw: bytes | tuple[dict, list[bytes]]
) -> tuple[service.PreparedRequest, int] | None:
    """The request prepared on the event loop, when the key, the routes and the model are all in memory and the
    inputs are texts (the common case: no thread hop at all); None when something needs the database, a load or a
    decode."""
    caller = recent_predict_caller(request.app.state, key)
    if caller is None or isinstance(raw, tuple) or len(raw) > IN_MEMORY_BODY_BYTES:
        return None
    team = caller.require(Scope.predict)
    try:
        prepared, body = _prepare(request, team.id, raw, None)
    except service.NeedsThread:
        return None
    _refresh_ahead(request.app.state, key, team.id, body.model)
    return prepared, body.top_k


def _refresh_ahead(state: Any, key: str, team_id: str, model_ref: str | None) -> None:
    """When the key's or the routes' entry is half its ttl old, look them up again in a worker thread while this and
    the next requests go on with what is in memory (app/ttl_cache.py)."""
    key_token = state.predict_keys.refresh_due(key)
    routes_token = state.serving.routes.refresh_due(service.routes_key(team_id, model_ref))
    if key_token is None and routes_token is None:
        return
    refresh = run_in_threadpool(_refresh, state, key, key_token, team_id, model_ref, routes_token)
    task = asyncio.get_running_loop().create_task(refresh)
    _background.add(task)  # held until done (the loop keeps only a weak reference)
    task.add_done_callback(_background.discard)


def _refresh(
    state: Any, key: str, key_token: int | None, team_id: str, model_ref: str | None, routes_token: int | None
) -> None:
    try:
        with state.db.session() as session:
            if key_token is not None:
                refresh_predict_caller(state, session, key, key_token)
            if routes_token is not None:
                state.serving.refresh(session, team_id, model_ref, routes_token)
    except Exception:  # the database away: forget both, so that the next request looks up itself and says why
        log.warning("could not refresh a /predict lookup", exc_info=True)
        if key_token is not None:
            state.predict_keys.refreshed(key, None, key_token)
        if routes_token is not None:
            state.serving.routes.refreshed(service.routes_key(team_id, model_ref), None, routes_token)


def _authorize_and_prepare(
    request: Request, credentials: HTTPAuthorizationCredentials | None, raw: bytes | tuple[dict, list[bytes]]
) -> tuple[service.PreparedRequest, int]:
    """Everything that blocks, in one worker thread: the key, the body, the model lookup, loading, decoding."""
    with request.app.state.db.session() as session:
        team = authenticate_for_predict(session, request, credentials).require(Scope.predict)
        prepared, body = _prepare(request, team.id, raw, session)
        return prepared, body.top_k


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
)
async def predict_endpoint(request: Request, credentials: BearerCredentials) -> JSONResponse:
    """Top-k labels for each input; concurrent requests for one model share forward passes (X-Batch-* headers).
    An alias may split requests between models (`routing_key` keeps a caller on one); `model_id` says which served."""
    started = time.monotonic()
    key = bearer_key(credentials)  # a 401 before any upload is read
    request.app.state.auth_throttle.check(client_address(request), key)  # and a 429 for an address guessing keys
    serving: service.Serving = request.app.state.serving
    with serving.cache.preparing:  # the batcher waits for company only while some request is still on its way
        raw = await _read(request)
        prepared_top_k = _prepare_in_memory(request, key, raw)
        if prepared_top_k is None:
            # One hop to a worker thread instead of one per sync dependency: the threads' handoffs cost CPU too.
            prepared_top_k = await run_in_threadpool(_authorize_and_prepare, request, credentials, raw)
    prepared, top_k = prepared_top_k
    # Waiting for the batched forward holds no thread: 32 waiting clients cost 32 futures.
    try:
        result = await prepared.submit(top_k)
    except Exception:
        service.record(serving, prepared, time.monotonic() - started, error=True)
        raise
    service.record(serving, prepared, time.monotonic() - started)
    if prepared.routes is not None and prepared.routes.shadow is not None:
        task = asyncio.create_task(service.shadow(serving, prepared, result))
        _background.add(task)  # held until done (the loop keeps only a weak reference)
        task.add_done_callback(_background.discard)
    # Built here rather than validated against PredictResponse by FastAPI (the schema the docs show): the body is
    # ours, and the check cost every request a validation and a serialization pass.
    headers = {"X-Batch-Size": str(result.batch_size), "X-Batch-Requests": str(result.batch_requests)}
    return JSONResponse(service.answer(prepared, result), headers=headers)
