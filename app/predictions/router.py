"""HTTP for batch prediction runs: submit, list, read, download the results, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.deps import ResourceId, SendPrediction, SessionDep, StoreDep, get_caller, require
from app.errors import InvalidInput
from app.pagination import Page, Paging
from app.predictions import service
from app.predictions.schemas import PredictionCreate, PredictionRead, PredictionUpload
from app.predictions.tables import PredictionRun
from app.quotas.service import check_can_store
from app.teams.scopes import Scope, allows
from app.teams.service import Caller
from app.teams.tables import Team

router = APIRouter(prefix="/predictions", tags=["predictions"])
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def team_watching(caller: Annotated[Caller, Depends(get_caller)]) -> Team:
    """A key with read, or with predict: whoever may submit a run may watch it and download its results."""
    return caller.team if allows(caller.scopes, Scope.predict) else caller.require(Scope.read)


WatchingTeam = Annotated[Team, Depends(team_watching)]
PredictingTeam = Annotated[Team, Depends(require(Scope.predict))]


def valid_run(run_id: ResourceId, team: WatchingTeam, session: SessionDep) -> PredictionRun:
    return service.get_run(session, team.id, run_id)


ValidRun = Annotated[PredictionRun, Depends(valid_run)]


@router.post(
    "",
    status_code=202,
    response_model=PredictionRead,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": PredictionCreate.model_json_schema()},
                "multipart/form-data": {"schema": PredictionUpload.model_json_schema()},
            }
        }
    },
)
async def create_prediction(request: Request, team: PredictingTeam, send: SendPrediction) -> PredictionRead:
    """Score a dataset (or one split) with a model or alias on a worker: JSON with a `dataset_id`, or multipart with
    a CSV/JSONL `file` of texts (and the fields `model`, `top_k`, `text_column`, `label_column`). Poll GET
    /predictions/{id}, then download GET /predictions/{id}/results?format=csv|jsonl. The uploaded file and the results
    count in the team's storage (429 over its limit) until DELETE /predictions/{id}."""
    state = request.app.state
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise InvalidInput("Send the texts to score as the multipart file field 'file' (a CSV or JSONL file).")
        fields = PredictionUpload.model_validate({k: v for k, v in form.items() if k != "file" and v != ""})
        upload = service.Upload(
            (file.filename or "upload")[-200:], await file.read(), fields.text_column, fields.label_column
        )

        def create(session: Session) -> PredictionRun:
            check_can_store(session, state.settings, team, len(upload.data))
            return service.create_run_from_upload(
                session, state.store, state.settings, team.id, fields.model, fields.top_k, upload, send
            )
    else:
        spec = PredictionCreate.model_validate_json(await request.body())

        def create(session: Session) -> PredictionRun:
            check_can_store(session, state.settings, team, 0)  # its results will be stored: none once over the limit
            return service.create_run(session, state.settings, team.id, spec, send)

    def in_session() -> PredictionRead:
        with state.db.session() as session:
            return PredictionRead.model_validate(create(session))

    return await run_in_threadpool(in_session)


@router.get("", response_model=Page[PredictionRead])
def list_predictions(team: WatchingTeam, session: SessionDep, page: Paging) -> Page:
    items, next_cursor = service.list_runs(session, team.id, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{run_id}", response_model=PredictionRead)
def read_prediction(run: ValidRun) -> PredictionRun:
    """Status and progress (rows_done of rows_total)."""
    return run


@router.get(
    "/{run_id}/results",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}, "description": "one line per row"}},
)
def read_results(
    run: ValidRun,
    store: StoreDep,
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl")] = "jsonl",
) -> StreamingResponse:
    """The results of a succeeded run, streamed: the dataset's row number, split, text or image entry, its label,
    the prediction and its probability (and the next top_k - 1)."""
    key = service.results_key(run, format)
    disposition = f'attachment; filename="predictions-{run.id}.{format}"'
    return StreamingResponse(
        store.iter_bytes(key), media_type=MEDIA_TYPES[format], headers={"Content-Disposition": disposition}
    )


@router.post("/{run_id}/cancel", response_model=PredictionRead)
def cancel_prediction(team: PredictingTeam, run: ValidRun, session: SessionDep) -> PredictionRun:
    """Stop a queued or running run (its worker stops at its next batch). `team` first: a key without `predict`
    gets its 403 before the run is looked up."""
    return service.cancel_run(session, run)


@router.delete("/{run_id}", status_code=204)
def delete_prediction(team: PredictingTeam, run: ValidRun, session: SessionDep, store: StoreDep) -> None:
    """Delete a finished run (succeeded, failed or cancelled) with its uploaded input and results, freeing their
    storage; a queued or running run answers 409 (cancel it first)."""
    service.delete_run(session, store, run)
