"""Per-team limits of a shared service: jobs waiting or training at once, and bytes stored.

Each team may have its own limits (columns on team, set with `finetune teams limits`); unset, the settings' apply.
A request over a limit is a 429 whose Retry-After says when trying again may help and whose detail names the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets.tables import Dataset
from app.errors import TooManyRequests
from app.jobs.tables import ACTIVE_STATUSES, Checkpoint, TrainingJob
from app.predictions.tables import PredictionRun
from app.registry.tables import RegisteredModel
from app.teams.tables import Team

MB = 1024 * 1024


@dataclass(frozen=True)
class Usage:
    active_jobs: int
    max_active_jobs: int
    dataset_bytes: int
    model_bytes: int
    checkpoint_bytes: int
    prediction_bytes: int
    max_storage_bytes: int

    @property
    def stored_bytes(self) -> int:
        return self.dataset_bytes + self.model_bytes + self.checkpoint_bytes + self.prediction_bytes

    def as_dict(self) -> dict:
        return {
            "active_jobs": {"used": self.active_jobs, "limit": self.max_active_jobs},
            "storage_bytes": {
                "used": self.stored_bytes,
                "limit": self.max_storage_bytes,
                "datasets": self.dataset_bytes,
                "models": self.model_bytes,
                "checkpoints": self.checkpoint_bytes,
                "predictions": self.prediction_bytes,
            },
        }


def usage(session: Session, settings: Settings, team: Team) -> Usage:
    """What the team holds against its limits."""
    active = session.scalar(
        select(func.count()).where(TrainingJob.team_id == team.id, TrainingJob.status.in_(ACTIVE_STATUSES))
    )
    datasets = session.scalar(select(func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.team_id == team.id))
    models = session.scalar(
        select(func.coalesce(func.sum(RegisteredModel.size_bytes), 0)).where(RegisteredModel.team_id == team.id)
    )
    checkpoints = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0))
        .join(TrainingJob, TrainingJob.id == Checkpoint.job_id)
        .where(TrainingJob.team_id == team.id)
    )
    predictions = session.scalar(
        select(func.coalesce(func.sum(PredictionRun.size_bytes), 0)).where(PredictionRun.team_id == team.id)
    )
    return Usage(
        active_jobs=int(active or 0),
        max_active_jobs=team.max_active_jobs or settings.team_max_active_jobs,
        dataset_bytes=int(datasets or 0),
        model_bytes=int(models or 0),
        checkpoint_bytes=int(checkpoints or 0),
        prediction_bytes=int(predictions or 0),
        max_storage_bytes=(team.max_storage_mb or settings.team_max_storage_mb) * MB,
    )


def check_can_submit(session: Session, settings: Settings, team: Team) -> None:
    """429 when the team already has its limit of jobs queued or running, or holds its storage limit."""
    _lock_team(session, team)
    now = usage(session, settings, team)
    if now.active_jobs >= now.max_active_jobs:
        raise TooManyRequests(
            f"team '{team.name}' has {now.active_jobs} jobs queued or running, its limit "
            f"(active jobs: {now.max_active_jobs}); wait for one to finish or cancel one (POST /jobs/{{id}}/cancel)",
            retry_after=60,
        )
    _check_storage(team, now, 0)


def check_can_store(session: Session, settings: Settings, team: Team, new_bytes: int) -> None:
    """429 when `new_bytes` more would take the team past its storage limit."""
    _lock_team(session, team)
    _check_storage(team, usage(session, settings, team), new_bytes)


def _check_storage(team: Team, now: Usage, new_bytes: int) -> None:
    if now.stored_bytes + new_bytes > now.max_storage_bytes:
        raise TooManyRequests(
            f"team '{team.name}' stores {now.stored_bytes / MB:.1f} MB of its {now.max_storage_bytes / MB:.0f} MB "
            f"limit (storage){f' and this needs {new_bytes / MB:.1f} MB more' if new_bytes else ''}; free space "
            "with DELETE /datasets/{id}, DELETE /models/{id}, DELETE /jobs/{id} or DELETE /predictions/{id} "
            "(see GET /usage)",
            retry_after=3600,
        )


def _lock_team(session: Session, team: Team) -> None:
    """Serialise a team's submissions (PostgreSQL row lock; SQLite writes are serial already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Team.id).where(Team.id == team.id).with_for_update())
