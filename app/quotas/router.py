"""GET /usage: what the caller's team holds against its limits."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import CurrentTeam, SessionDep, SettingsDep
from app.quotas.service import usage

router = APIRouter(tags=["usage"])


@router.get("/usage")
def read_usage(team: CurrentTeam, session: SessionDep, settings: SettingsDep) -> dict:
    """Jobs queued or running and bytes stored (datasets, models, checkpoints, prediction runs), each beside the
    team's limit."""
    return {"team": team.name, **usage(session, settings, team).as_dict()}
