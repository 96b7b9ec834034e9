"""Creating teams and keys, and resolving a bearer token to its team."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound, Unauthorized
from app.teams.tables import ApiKey, Team

KEY_PREFIX = "ftk_"


def hash_key(key: str) -> str:
    """SHA-256 of a key: keys are 256-bit random, so a fast hash is enough (no password stretching needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, team_name: str) -> tuple[Team, str]:
    """Create the team if needed and a new key for it; the plain key is returned once, never stored."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        team = Team(name=team_name)
        session.add(team)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(team_id=team.id, prefix=key[:10], key_hash=hash_key(key)))
    session.flush()
    return team, key


def team_for_key(session: Session, key: str) -> Team:
    """The team a bearer key belongs to, or 401."""
    row = session.execute(
        select(Team)
        .join(ApiKey, ApiKey.team_id == Team.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("The API key is unknown or revoked. Create one with `finetune keys create --team NAME`.")
    return row


def set_limits(session: Session, team_name: str, max_active_jobs: int | None, max_storage_mb: int | None) -> Team:
    """Give a team its own limits (None leaves a limit as it is; 0 returns it to the service's default)."""
    team = session.scalar(select(Team).where(Team.name == team_name))
    if team is None:
        raise NotFound(f"No team '{team_name}'. Teams are created with `finetune keys create --team NAME`.")
    if max_active_jobs is not None:
        team.max_active_jobs = max_active_jobs or None
    if max_storage_mb is not None:
        team.max_storage_mb = max_storage_mb or None
    session.flush()
    return team
