"""Creating teams and keys, and resolving a bearer token to its team."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Unauthorized
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
