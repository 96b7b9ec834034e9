"""POST /predict: JSON (texts, or base64 images) or multipart (image files)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.deps import authenticate_request, bearer, bearer_key, client_address
from app.errors import InvalidInput
from app.inference import service
from app.inference.cache import ModelCache
from app.input_limits import InputLimits
from app.teams.scopes import Scope

router = APIRouter(tags=["predict"])
# Only the bearer header is a dependency: the database work happens in the handler's single worker-thread hop.
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


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


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
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
    """The raw JSON body, or a multipart form's 'model', 'top_k' and 'calibrated' fields and its 'files'."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = [await f.read() for f in form.getlist("files") if hasattr(f, "read")]
        return {k: form.get(k) for k in ("model", "top_k", "calibrated") if form.get(k) not in (None, "")}, files
    return await request.body()


def _authorize_and_prepare(
    request: Request, credentials: HTTPAuthorizationCredentials | None, raw: bytes | tuple[dict, list[bytes]]
) -> tuple[service.PreparedRequest, int]:
    """Everything that blocks, in one worker thread: the key, the body, the model lookup, loading, encoding."""
    with request.app.state.db.session() as session:
        team = authenticate_request(session, request, credentials).require(Scope.predict)
        body, images = _parse(raw)
        prepared = service.prepare(
            session,
            request.app.state.store,
            request.app.state.model_cache,
            team.id,
            body.model,
            body.texts,
            images,
            InputLimits.from_settings(request.app.state.settings),
            body.calibrated,
        )
    return prepared, body.top_k


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
)
async def predict_endpoint(request: Request, response: Response, credentials: BearerCredentials) -> dict:
    """Top-k labels for each input; concurrent requests for one model share forward passes (X-Batch-* headers)."""
    key = bearer_key(credentials)  # a 401 before any upload is read
    request.app.state.auth_throttle.check(client_address(request), key)  # and a 429 for an address guessing keys
    cache: ModelCache = request.app.state.model_cache
    with cache.preparing:  # the batcher waits for company only while some request is still on its way
        raw = await _read(request)
        # One hop to a worker thread instead of one per sync dependency: the threads' handoffs cost CPU too.
        prepared, top_k = await run_in_threadpool(_authorize_and_prepare, request, credentials, raw)
    # Waiting for the batched forward holds no thread: 32 waiting clients cost 32 futures.
    result = await prepared.submit(top_k)
    response.headers["X-Batch-Size"] = str(result.batch_size)
    response.headers["X-Batch-Requests"] = str(result.batch_requests)
    return service.answer(prepared, result)
