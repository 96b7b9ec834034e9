"""POST /predict: JSON (texts, or base64 images) or multipart (image files)."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.deps import CurrentTeam, SessionDep, StoreDep
from app.errors import InvalidInput
from app.inference import service

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
async def predict_endpoint(request: Request, team: CurrentTeam, session: SessionDep, store: StoreDep) -> dict:
    parsed = await _parse(request)
    body, files = parsed if isinstance(parsed, tuple) else (parsed, None)
    images = files if files is not None else (_decode_base64(body.images) if body.images else None)
    cache = request.app.state.model_cache
    # The forward pass is CPU/GPU bound: keep it off the event loop.
    return await run_in_threadpool(
        service.predict, session, store, cache, team.id, body.model, body.texts, images, body.top_k
    )
