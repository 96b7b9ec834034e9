"""Finding lost work: jobs whose worker stopped renewing its lease, and queued jobs whose message was lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.jobs.models import JobEvent, JobStatus, TrainingJob


@dataclass
class Reaped:
    to_enqueue: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reap(session: Session, settings: Settings) -> Reaped:
    """One pass; every change is a conditional UPDATE, so reapers on many workers never double-handle a job."""
    now = utcnow()
    result = Reaped()
    lease_cutoff = now - timedelta(seconds=settings.lease_seconds)
    expired = session.scalars(
        select(TrainingJob).where(TrainingJob.status == JobStatus.running, TrainingJob.heartbeat_at < lease_cutoff)
    ).all()
    for job in expired:
        _handle_expired(session, job, settings, lease_cutoff, result)
    send_cutoff = now - timedelta(seconds=settings.requeue_after_seconds)
    waiting = session.scalars(
        select(TrainingJob.id).where(
            TrainingJob.status == JobStatus.queued,
            TrainingJob.cancel_requested.is_(False),
            (TrainingJob.enqueued_at.is_(None)) | (TrainingJob.enqueued_at < send_cutoff),
        )
    ).all()
    for job_id in waiting:
        taken = session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == job_id,
                TrainingJob.status == JobStatus.queued,
                (TrainingJob.enqueued_at.is_(None)) | (TrainingJob.enqueued_at < send_cutoff),
            )
            .values(enqueued_at=now)
        ).rowcount
        if taken:
            result.to_enqueue.append(job_id)
    return result


def _handle_expired(session: Session, job: TrainingJob, settings: Settings, cutoff, result: Reaped) -> None:  # noqa: ANN001
    """Requeue a job whose worker was lost, unless it was cancelled or has used up its restarts."""
    fence = (
        (TrainingJob.id == job.id)
        & (TrainingJob.attempt == job.attempt)
        & (TrainingJob.status == JobStatus.running)
        & (TrainingJob.heartbeat_at < cutoff)
    )
    lost = f"worker {job.worker} stopped renewing its lease (attempt {job.attempt})"
    now = utcnow()
    if job.cancel_requested:
        values, kind, bucket = {"status": JobStatus.cancelled, "finished_at": now}, "cancelled", result.cancelled
        message = f"{lost}; the job was being cancelled, so it stays cancelled"
    elif job.attempt > settings.max_restarts:
        reason = f"{lost}; gave up after {settings.max_restarts} restarts (FINETUNE_MAX_RESTARTS)"
        values, kind, bucket = (
            {"status": JobStatus.failed, "finished_at": now, "error": reason},
            "failed",
            result.failed,
        )
        message = reason
    else:
        values, kind, bucket = (
            {"status": JobStatus.queued, "worker": None, "enqueued_at": now},
            "requeued",
            result.to_enqueue,
        )
        message = f"{lost}; requeued to resume from its last checkpoint"
    if session.execute(update(TrainingJob).where(fence).values(**values)).rowcount:
        session.add(JobEvent(job_id=job.id, kind=kind, message=message, attempt=job.attempt))
        bucket.append(job.id)
