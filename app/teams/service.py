"""Creating, listing and revoking teams' keys, and resolving a bearer token to its team and scopes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import Forbidden, NotFound, Unauthorized
from app.teams.scopes import Scope, allows, format_scopes
from app.teams.tables import DEFAULT_SCOPES, ApiKey, Team

KEY_PREFIX = "ftk_"
# last_used_at is written at most this often per key, so authenticating is a read on almost every request
LAST_USED_RESOLUTION = timedelta(seconds=60)
CREATE_HINT = "Create one with `finetune keys create --team NAME`."


def hash_key(key: str) -> str:
    """SHA-256 of a key: keys are 256-bit random, so a fast hash is enough (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    team_name: str,
    scopes: list[Scope] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create the team if needed and a new key for it; the plain key is returned once, never stored."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        team = Team(name=team_name)
        session.add(team)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        team_id=team.id,
        prefix=key[:10],
        key_hash=hash_key(key),
        scopes=format_scopes(scopes) if scopes else DEFAULT_SCOPES,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


@dataclass(frozen=True)
class KeyInfo:
    """What `finetune keys list` shows of a key: never the key or its hash."""

    id: str
    prefix: str
    team: str
    scopes: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


def list_keys(session: Session, team_name: str | None = None) -> list[KeyInfo]:
    """Every key (of one team), oldest first."""
    query = select(ApiKey, Team.name).join(Team, Team.id == ApiKey.team_id).order_by(ApiKey.created_at, ApiKey.id)
    if team_name is not None:
        query = query.where(Team.name == team_name)
    return [
        KeyInfo(k.id, k.prefix, name, k.scopes, k.created_at, k.expires_at, k.last_used_at, k.revoked_at)
        for k, name in session.execute(query)
    ]


def revoke_key(session: Session, prefix_or_id: str) -> tuple[ApiKey, bool]:
    """Revoke the key with this id, prefix (as `keys list` shows it) or plain value; its next request gets 401.
    Returns the key and whether this call revoked it (a revoked key stays as it was). NotFound if none matches, or if a prefix is ambiguous (listing the ids
    to choose from)."""
    matches = list(
        session.scalars(
            select(ApiKey).where(
                or_(ApiKey.id == prefix_or_id, ApiKey.prefix == prefix_or_id, ApiKey.key_hash == hash_key(prefix_or_id))
            )
        )
    )
    if not matches:
        raise NotFound(f"No key has the id or prefix '{prefix_or_id[:40]}'; see `finetune keys list`.")
    if len(matches) > 1:
        ids = ", ".join(k.id for k in matches)
        raise NotFound(f"Several keys start with '{prefix_or_id[:40]}'; revoke one by its id: {ids}.")
    key = matches[0]
    if key.revoked_at is not None:
        return key, False
    key.revoked_at = utcnow()
    session.flush()
    return key, True


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the team, and the scopes of the key it used."""

    team: Team
    key_id: str
    scopes: str
    expires_at: datetime | None = None

    def require(self, scope: Scope) -> Team:
        """The team, or 403 naming the scope this key lacks."""
        if not allows(self.scopes, scope):
            raise Forbidden(
                f"This API key has the scopes '{self.scopes}'; this request needs '{scope}'. "
                f"Create a key with it: `finetune keys create --team {self.team.name} --scope {scope}`."
            )
        return self.team


def authenticate(session: Session, key: str) -> Caller:
    """The team and scopes of a bearer key, or 401 (unknown, revoked or expired: each says what to do).
    Records last_used_at when it is more than a minute old (one conditional UPDATE, not a write per request)."""
    row = session.execute(
        select(ApiKey, Team).join(Team, Team.id == ApiKey.team_id).where(ApiKey.key_hash == hash_key(key))
    ).one_or_none()
    if row is None:
        raise Unauthorized(f"The API key is unknown. {CREATE_HINT}")
    api_key, team = row.tuple()
    now = utcnow()
    if api_key.revoked_at is not None:
        raise Unauthorized(
            f"This API key ({api_key.prefix}…) was revoked at {api_key.revoked_at:%Y-%m-%d %H:%M} UTC. {CREATE_HINT}"
        )
    if api_key.expires_at is not None and api_key.expires_at <= now:
        raise Unauthorized(
            f"This API key ({api_key.prefix}…) expired at {api_key.expires_at:%Y-%m-%d %H:%M} UTC. {CREATE_HINT}"
        )
    stale = now - LAST_USED_RESOLUTION
    if api_key.last_used_at is None or api_key.last_used_at < stale:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == api_key.id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale))
            .values(last_used_at=now)
        )
        # At once: on SQLite a request that kept this write open would hold the database's write lock while it runs,
        # and a write of its own through another connection (alias traffic counters) would wait on it until timeout.
        session.commit()
    return Caller(team=team, key_id=api_key.id, scopes=api_key.scopes, expires_at=api_key.expires_at)


def set_limits(
    session: Session,
    team_name: str,
    max_active_jobs: int | None,
    max_storage_mb: int | None,
    weight: float | None = None,
    max_running_jobs: int | None = None,
) -> Team:
    """Give a team its own limits and fleet share (None leaves one as it is; 0 returns it to the default)."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        raise NotFound(f"No team '{team_name}'. Teams are created with `finetune keys create --team NAME`.")
    if max_active_jobs is not None:
        team.max_active_jobs = max_active_jobs or None
    if max_storage_mb is not None:
        team.max_storage_mb = max_storage_mb or None
    if weight is not None:
        team.weight = weight or None
    if max_running_jobs is not None:
        team.max_running_jobs = max_running_jobs or None
    session.flush()
    return team
