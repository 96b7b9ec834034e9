"""HTTP for models and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from app.deps import NEEDS_TRAIN, CurrentTeam, ResourceId, SessionDep, StoreDep
from app.pagination import Page, Paging
from app.registry import service
from app.registry.schemas import AliasRead, AliasSet, ModelRead
from app.registry.tables import Alias, RegisteredModel

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


@router.put("/aliases/{name}", response_model=AliasRead, dependencies=[NEEDS_TRAIN])
def set_alias(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")],
    body: AliasSet,
    team: CurrentTeam,
    session: SessionDep,
) -> Alias:
    """Create or move an alias; `require_improvement` gates the move on the test scores (409 when not better)."""
    rule = body.require_improvement
    return service.set_alias(session, team.id, name, body.model_id, body.force, rule.metric if rule else None)


@router.get("/aliases", response_model=list[AliasRead])
def list_aliases(team: CurrentTeam, session: SessionDep) -> list:
    return service.list_aliases(session, team.id)
