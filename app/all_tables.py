"""Imports every ORM model so Base.metadata is complete (for Alembic and tests)."""

from app.datasets.tables import Dataset
from app.fleet.tables import FleetWorker
from app.idempotency.tables import IdempotentRequest
from app.jobs.tables import Checkpoint, DeviceUsage, JobEvent, Metric, TrainingJob
from app.predictions.tables import PredictionRun
from app.registry.tables import Alias, AliasTraffic, RegisteredModel
from app.sweeps.tables import Sweep, SweepTrial
from app.teams.tables import ApiKey, Team

__all__ = [
    "Alias",
    "AliasTraffic",
    "ApiKey",
    "Checkpoint",
    "Dataset",
    "DeviceUsage",
    "FleetWorker",
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
