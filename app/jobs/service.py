"""Job rules: submit (enqueue after commit), read, cancel, and the run's metrics, checkpoints and events."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.datasets.service import get_dataset
from app.db import utcnow
from app.errors import Conflict, NotFound
from app.jobs.models import FINISHED, Checkpoint, JobEvent, JobStatus, Metric, TrainingJob
from app.jobs.schemas import JobCreate
from app.models.resolve import resolve_base_model
from app.pagination import newest_first
from app.queue import enqueue_training
from app.storage import ArtifactStore

log = logging.getLogger(__name__)


def create_job(
    session: Session, store: ArtifactStore, celery: Celery, settings: Settings, team_id: str, spec: JobCreate
) -> TrainingJob:
    """Check the spec against what exists, commit the job row, then enqueue its id."""
    dataset = get_dataset(session, team_id, spec.dataset_id)
    resolve_base_model(session, store, settings.models_dir, team_id, spec.base_model)
    job = TrainingJob(
        team_id=team_id,
        dataset_id=dataset.id,
        task=dataset.task,
        base_model=spec.base_model,
        hyperparameters=spec.hyperparameters.for_task(dataset.task).model_dump(mode="json"),
        status=JobStatus.queued,
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, kind="queued", message=f"queued: {spec.base_model} on dataset {dataset.id}"))
    session.commit()
    send_to_queue(session, celery, job)
    return job


def send_to_queue(session: Session, celery: Celery, job: TrainingJob) -> None:
    """Send the committed job's id; if the broker is down the job stays queued and a worker's reaper re-sends it."""
    try:
        enqueue_training(celery, job.id)
    except Exception as exc:  # noqa: BLE001  (any broker failure)
        log.warning("could not enqueue job %s: %s", job.id, exc)
        session.add(
            JobEvent(job_id=job.id, kind="enqueue_failed", message=f"broker unreachable ({exc}); will be re-sent")
        )
    else:
        job.enqueued_at = utcnow()
    session.commit()


def get_job(session: Session, team_id: str, job_id: str) -> TrainingJob:
    """The team's job, or 404 (another team's answers exactly like a missing one)."""
    job = session.scalar(select(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.team_id == team_id))
    if job is None:
        raise NotFound(f"No job '{job_id}'. List yours with GET /jobs.")
    return job


def list_jobs(
    session: Session, team_id: str, status: str | None, limit: int, cursor: str | None
) -> tuple[list[TrainingJob], str | None]:
    """Newest first, cursor-paged, optionally one status only."""
    query = select(TrainingJob).where(TrainingJob.team_id == team_id)
    if status:
        query = query.where(TrainingJob.status == status)
    anchor = get_job(session, team_id, cursor) if cursor else None
    return newest_first(session, query, TrainingJob, anchor, limit)


def cancel_job(session: Session, job: TrainingJob) -> TrainingJob:
    """A queued job is cancelled at once; a running one is flagged and stops at its next step boundary."""
    if job.status in FINISHED:
        if job.status == JobStatus.cancelled:
            return job
        raise Conflict(f"Job '{job.id}' already {job.status}; only queued or running jobs can be cancelled.")
    now = utcnow()
    session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(cancel_requested=True))
    session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job.id, TrainingJob.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, finished_at=now)
    )
    session.add(JobEvent(job_id=job.id, kind="cancel_requested", message="cancel requested", attempt=job.attempt))
    session.flush()
    session.refresh(job)
    return job


def list_metrics(
    session: Session, job: TrainingJob, name: str | None, after_step: int | None, limit: int, cursor: int | None
) -> tuple[list[Metric], str | None]:
    """Metric rows in the order written (step order), filtered by name and step, cursor-paged by row id."""
    query = select(Metric).where(Metric.job_id == job.id)
    if name:
        query = query.where(Metric.name == name)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    if cursor is not None:
        query = query.where(Metric.id > cursor)
    rows = list(session.scalars(query.order_by(Metric.id).limit(limit + 1)))
    return rows[:limit], (str(rows[limit - 1].id) if len(rows) > limit else None)


def list_checkpoints(session: Session, job: TrainingJob) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step, Checkpoint.created_at)
        )
    )


def list_events(
    session: Session, job: TrainingJob, limit: int, cursor: int | None
) -> tuple[list[JobEvent], str | None]:
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if cursor is not None:
        query = query.where(JobEvent.id > cursor)
    rows = list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)))
    return rows[:limit], (str(rows[limit - 1].id) if len(rows) > limit else None)


def get_report(job: TrainingJob) -> dict:
    if job.report is None:
        raise NotFound(f"Job '{job.id}' has no report yet (status: {job.status}); it is written when the job succeeds.")
    return job.report
