"""HTTP for models and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.deps import CurrentTeam, SessionDep
from app.models import service
from app.models.models import Alias, RegisteredModel
from app.models.schemas import AliasRead, AliasSet, ModelRead
from app.pagination import Page

router = APIRouter(tags=["models"])


@router.get("/models", response_model=Page[ModelRead])
def list_models(
    team: CurrentTeam,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page:
    items, next_cursor = service.list_models(session, team.id, limit, cursor)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/models/{model_id}", response_model=ModelRead)
def read_model(model_id: str, team: CurrentTeam, session: SessionDep) -> RegisteredModel:
    return service.get_model(session, team.id, model_id)


@router.put("/aliases/{name}", response_model=AliasRead)
def set_alias(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")],
    body: AliasSet,
    team: CurrentTeam,
    session: SessionDep,
) -> Alias:
    return service.set_alias(session, team.id, name, body.model_id)


@router.get("/aliases", response_model=list[AliasRead])
def list_aliases(team: CurrentTeam, session: SessionDep) -> list:
    return service.list_aliases(session, team.id)
