"""Request dependencies as Annotated aliases, so handler signatures read like prose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import utcnow
from app.errors import Unauthorized
from app.jobs.lifecycle import Send
from app.queue import enqueue_batch_prediction, enqueue_checkpoint_report, enqueue_training
from app.teams.scopes import Scope
from app.teams.service import Caller, authenticate
from app.teams.tables import Team
from app.teams.throttle import FailedAuthThrottle

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


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate_request(
    session: Session, request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    """The caller of `request`: 401 without a key; 429 from an address with too many failed keys (checked before
    the database); 401 for an unknown, revoked or expired key, which counts as a failure of its address."""
    key = bearer_key(credentials)
    throttle: FailedAuthThrottle = request.app.state.auth_throttle
    address = client_address(request)
    throttle.check(address, key)
    try:
        caller = authenticate(session, key)
    except Unauthorized:
        throttle.failed(address)
        raise
    throttle.succeeded(key)
    return caller


PREDICT_PATH = "/predict"


def authenticate_for_predict(
    session: Session, request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Caller:
    """As authenticate_request, and the caller is remembered for the next /predict requests with this key (for at most
    FINETUNE_PREDICT_LOOKUP_TTL_SECONDS: a key revoked meanwhile is refused once that has passed)."""
    caller = authenticate_request(session, request, credentials)
    request.app.state.predict_keys.put(bearer_key(credentials), _detached(caller))
    return caller


def _detached(caller: Caller) -> Caller:
    """A copy with the team outside the session: a rollback of the session expires the row it loaded."""
    return replace(caller, team=Team(id=caller.team.id, name=caller.team.name))


def refresh_predict_caller(state: Any, session: Session, key: str, token: int) -> None:
    """Look a remembered /predict key up again (refresh ahead, app/ttl_cache.py): revoked or expired, it is forgotten,
    and its next request is answered 401 by the usual path."""
    try:
        caller: Caller | None = _detached(authenticate(session, key))
    except Unauthorized:
        caller = None
    state.predict_keys.refreshed(key, caller, token)


def recent_predict_caller(state: Any, key: str) -> Caller | None:
    """The caller of a key that authenticated for /predict less than the lookup ttl ago and has not expired since."""
    caller: Caller | None = state.predict_keys.get(key)
    if caller is None or (caller.expires_at is not None and caller.expires_at <= utcnow()):
        return None
    return caller


def known_predict_key(state: Any, path: str, key: str) -> bool:
    """Whether the request-limits middleware may skip its database check: a /predict key seen lately."""
    return path.rstrip("/") == PREDICT_PATH and recent_predict_caller(state, key) is not None


def get_caller(
    request: Request,
    session: Annotated[Session, Depends(get_session, scope="function")],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    return authenticate_request(session, request, credentials)


def require(scope: Scope) -> Callable[..., Team]:
    """A dependency: the caller's team if its key has `scope` (admin has all), else 403 naming the scope."""

    def team_with_scope(caller: Annotated[Caller, Depends(get_caller)]) -> Team:
        return caller.require(scope)

    team_with_scope.__name__ = f"team_with_{scope}_scope"
    return team_with_scope


def check_key_before_body(state: Any, key: str, address: str) -> None:
    """The request-limits middleware's check, before any body is read: the same throttle and key rules as every
    route (429 for an address with too many failed keys, 401 for an unknown, revoked or expired key)."""
    throttle: FailedAuthThrottle = state.auth_throttle
    throttle.check(address, key)
    with state.db.session() as session:
        try:
            authenticate(session, key)
        except Unauthorized:
            throttle.failed(address)
            raise
    throttle.succeeded(key)


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_sender(request: Request) -> Send:
    """Sends a committed job's id to the training queue (see lifecycle.dispatch)."""
    return partial(enqueue_training, request.app.state.celery)


def get_report_sender(request: Request) -> Send:
    """Sends a checkpoint's id to the workers of a pool, which compute its evaluation report."""
    return partial(enqueue_checkpoint_report, request.app.state.celery)


def get_prediction_sender(request: Request) -> Send:
    """Sends a committed batch prediction run's id to the workers of a pool."""
    return partial(enqueue_batch_prediction, request.app.state.celery)


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


# scope="function": the session commits before the response is sent, so a client never reads stale state.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
# Every route needs a key with a scope: `team: CurrentTeam` (read) in its signature, and routes that change
# something add `dependencies=[NEEDS_TRAIN]` (one key lookup serves both); /predict checks its own scope.
CurrentTeam = Annotated[Team, Depends(require(Scope.read))]
NEEDS_TRAIN: Any = Depends(require(Scope.train))
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SendJob = Annotated[Send, Depends(get_sender)]
SendReport = Annotated[Send, Depends(get_report_sender)]
SendPrediction = Annotated[Send, Depends(get_prediction_sender)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
# A dataset, job or model id in a URL: bounded, so a 404 never echoes more than this.
ResourceId = Annotated[str, Path(min_length=1, max_length=64)]
