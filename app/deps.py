"""Request dependencies as Annotated aliases, so handler signatures read like prose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.errors import Unauthorized
from app.queue import enqueue_training
from app.teams.service import team_for_key
from app.teams.tables import Team

bearer = HTTPBearer(auto_error=False, description="An API key from `finetune keys create --team NAME`")


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; commits if the handler returned, rolls back if it raised."""
    with request.app.state.db.session() as session:
        yield session


def bearer_key(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The API key of an `Authorization: Bearer` header, or 401 (without touching the database)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
    return credentials.credentials


def get_team(
    session: Annotated[Session, Depends(get_session, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Team:
    return team_for_key(session, bearer_key(credentials))


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_sender(request: Request) -> Callable[[str], None]:
    """Sends a committed job's id to the training queue (see lifecycle.dispatch)."""
    return partial(enqueue_training, request.app.state.celery)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


# scope="function": the session commits before the response is sent, so a client never reads stale state.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
CurrentTeam = Annotated[Team, Depends(get_team)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SendJob = Annotated[Callable[[str], None], Depends(get_sender)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# A dataset, job or model id in a URL: bounded, so a 404 never echoes more than this.
ResourceId = Annotated[str, Path(min_length=1, max_length=64)]
