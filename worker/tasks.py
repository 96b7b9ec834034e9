"""Thin Celery tasks: a job id in, this process's own database session, the runner does the work."""

from __future__ import annotations

from functools import lru_cache

import torch

import app.all_models  # noqa: F401  (every table known to this process)
from app.config import get_settings
from app.db import Database
from app.queue import TRAIN_TASK
from app.storage import ArtifactStore
from worker.celery_app import celery_app
from worker.runner import run_job


@lru_cache
def _resources() -> tuple[Database, ArtifactStore]:
    """Engine and store built in the worker process on first use, never at import (fork safety)."""
    settings = get_settings()
    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    return Database(settings.database_url), ArtifactStore.from_settings(settings)


@celery_app.task(name=TRAIN_TASK, acks_late=True)
def train(job_id: str) -> None:
    db, store = _resources()
    run_job(job_id, get_settings(), db, store)
