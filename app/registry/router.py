"""HTTP for models and aliases."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request

from app.deps import NEEDS_TRAIN, CurrentTeam, ResourceId, SessionDep, StoreDep
from app.errors import InvalidInput
from app.inference.conversion import ensure_converted
from app.inference.passing_thread import in_passing_thread
from app.inference.service import Serving
from app.pagination import Page, Paging
from app.registry import service
from app.registry.routes import ServedModel
from app.registry.schemas import AliasRead, AliasSet, AliasStats, ModelRead, ModelTraffic
from app.registry.tables import RegisteredModel

log = logging.getLogger(__name__)
router = APIRouter(tags=["models"])


@router.get("/models", response_model=Page[ModelRead])
def list_models(
    team: CurrentTeam,
    session: SessionDep,
    page: Paging,
) -> Page:
    items, next_cursor = service.list_models(session, team.id, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/models/{model_id}", response_model=ModelRead)
def read_model(model_id: ResourceId, team: CurrentTeam, session: SessionDep) -> RegisteredModel:
    return service.get_model(session, team.id, model_id)


@router.delete("/models/{model_id}", status_code=204, dependencies=[NEEDS_TRAIN])
def delete_model(
    model_id: ResourceId, team: CurrentTeam, session: SessionDep, store: StoreDep, request: Request
) -> None:
    """Delete a model and its files; refused (409) while an alias routes to it or a job trains from it."""
    service.delete_model(session, store, team.id, model_id)
    request.app.state.model_cache.discard(model_id)
    request.app.state.serving.forget_team(team.id)


AliasName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


@router.put("/aliases/{name}", response_model=AliasRead, dependencies=[NEEDS_TRAIN])
def set_alias(
    name: AliasName, body: AliasSet, team: CurrentTeam, session: SessionDep, store: StoreDep, request: Request
) -> AliasRead:
    """Create or move an alias: to one model, or split by weight between models, with an optional shadow, in a
    runtime (torch, onnx, int8). `require_improvement` gates the move on the test scores (409 when not better). The
    models are converted for the runtime (the first time), loaded and warmed in this process before the alias moves:
    a model that fails to convert or load is a 422 and the alias stays where it was."""
    serving: Serving = request.app.state.serving
    rule = body.require_improvement

    def before_move(models: list[RegisteredModel]) -> None:
        check_one_task(name, models)
        for model in models:
            # in a thread that ends with it: torch's math in a long-lived threadpool thread slows /predict
            in_passing_thread(ensure_converted, session, store, model, body.runtime, serving.cache.threads)
        warm_all(serving, team.id, name, [served(m, body.runtime) for m in models])

    alias = service.set_alias(
        session,
        team.id,
        name,
        body.weighted(),
        body.shadow_model_id,
        body.force,
        rule.metric if rule else None,
        before_move=before_move,
        runtime=body.runtime,
    )
    read = AliasRead.of(alias)
    session.commit()
    serving.forget_team(team.id)  # this process routes by the new alias from its next request
    return read


def check_one_task(name: str, models: list[RegisteredModel]) -> None:
    tasks = {m.task for m in models}
    if len(tasks) > 1:
        raise InvalidInput(
            f"alias '{name}' would mix tasks ({', '.join(sorted(tasks))}): its routes and shadow must all read the "
            "same inputs; use models of one task"
        )


def served(model: RegisteredModel, runtime: str) -> ServedModel:
    return ServedModel(model.id, model.task, model.storage_key, runtime)


def warm_all(serving: Serving, team_id: str, name: str, models: list[ServedModel]) -> None:
    """Load and run every model the alias will use; 422 naming the one that fails (the alias does not move)."""
    for model in models:
        try:
            serving.warm(team_id, model)
        except Exception as exc:
            log.warning("model %s failed to load for alias %s", model.id, name, exc_info=True)
            raise InvalidInput(
                f"model '{model.id}' could not be loaded ({exc.__class__.__name__}: {str(exc)[:200]}); alias "
                f"'{name}' was not moved and keeps serving as before. Its files may be damaged: retrain it, or "
                "point the alias at another model",
                title="Model failed to load",
            ) from exc


@router.get("/aliases", response_model=list[AliasRead])
def list_aliases(team: CurrentTeam, session: SessionDep) -> list[AliasRead]:
    return [AliasRead.of(a) for a in service.list_aliases(session, team.id)]


@router.get("/aliases/{name}/stats", response_model=AliasStats)
def alias_stats(name: AliasName, team: CurrentTeam, session: SessionDep, request: Request) -> AliasStats:
    """What each model did for the alias: requests, inputs, errors and mean latency of its routes; the shadow's
    agreement with the served answers (top label per input). Counters of every API process, about a second behind."""
    request.app.state.serving.traffic.flush()  # this process's latest counts, at least
    alias, rows = service.alias_traffic(session, team.id, name)
    return AliasStats(alias=AliasRead.of(alias), models=[ModelTraffic.of(r) for r in rows])
