"""Imports every ORM model so Base.metadata is complete (for Alembic and tests)."""

from app.datasets.models import Dataset
from app.jobs.models import Checkpoint, JobEvent, Metric, TrainingJob
from app.models.models import Alias, RegisteredModel
from app.teams.models import ApiKey, Team

__all__ = ["Alias", "ApiKey", "Checkpoint", "Dataset", "JobEvent", "Metric", "RegisteredModel", "Team", "TrainingJob"]
