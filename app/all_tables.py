"""Imports every ORM model so Base.metadata is complete (for Alembic and tests)."""

from app.datasets.tables import Dataset
from app.idempotency.tables import IdempotentRequest
from app.jobs.tables import Checkpoint, JobEvent, Metric, TrainingJob
from app.predictions.tables import PredictionRun
from app.registry.tables import Alias, RegisteredModel
from app.sweeps.tables import Sweep, SweepTrial
from app.teams.tables import ApiKey, Team

__all__ = [
    "Alias",
    "ApiKey",
    "Checkpoint",
    "Dataset",
    "IdempotentRequest",
    "JobEvent",
    "Metric",
    "PredictionRun",
    "RegisteredModel",
    "Sweep",
    "SweepTrial",
    "Team",
    "TrainingJob",
]
