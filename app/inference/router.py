"""POST /predict: JSON (texts, or base64 images) or multipart (image files)."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTeam, SessionDep, StoreDep
from app.errors import InvalidInput
from app.inference import service
from app.inference.cache import ModelCache

router = APIRouter(tags=["predict"])


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(None, description="a model id or an alias; default: the 'production' alias")
    texts: list[str] | None = None
    images: list[str] | None = Field(None, description="base64-encoded image files")
    top_k: int = Field(1, ge=1, le=1000)


class Prediction(BaseModel):
    label: str
    score: float


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    predictions: list[list[Prediction]]


def _decode_base64(images: list[str]) -> list[bytes]:
    decoded = []
    for i, item in enumerate(images):
        try:
            decoded.append(base64.b64decode(item.split(",", 1)[-1], validate=True))
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"images[{i}] is not valid base64.") from exc
    return decoded


async def _parse(request: Request) -> PredictRequest | tuple[PredictRequest, list[bytes]]:
    """JSON body, or a multipart form with 'files' and optional 'model' and 'top_k'."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = [await f.read() for f in form.getlist("files") if hasattr(f, "read")]
        fields = {k: form.get(k) for k in ("model", "top_k") if form.get(k) not in (None, "")}
        return PredictRequest.model_validate(fields), files
    return PredictRequest.model_validate_json(await request.body())


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
)
async def predict_endpoint(
    request: Request, response: Response, team: CurrentTeam, session: SessionDep, store: StoreDep
) -> dict:
    cache: ModelCache = request.app.state.model_cache
    with cache.preparing:  # the batcher waits for company only while some request is still on its way
        parsed = await _parse(request)
        body, files = parsed if isinstance(parsed, tuple) else (parsed, None)
        images = files if files is not None else (_decode_base64(body.images) if body.images else None)
        # Database lookups, model loading and decoding block: a worker thread, released before the forward.
        prepared = await run_in_threadpool(
            service.prepare, session, store, cache, team.id, body.model, body.texts, images
        )
    # Waiting for the batched forward holds no thread: 32 waiting clients cost 32 futures.
    result = await prepared.submit()
    response.headers["X-Batch-Size"] = str(result.batch_size)
    response.headers["X-Batch-Requests"] = str(result.batch_requests)
    return service.answer(prepared, result, body.top_k)
