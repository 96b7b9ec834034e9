"""Job state transitions a worker makes; every write after the claim is fenced by the attempt number."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.jobs.models import Checkpoint, JobEvent, JobStatus, Metric, TrainingJob


class LostLease(Exception):
    """This worker's attempt no longer owns the job (it was reclaimed or finished elsewhere)."""


def claim_job(session: Session, job_id: str, worker: str) -> int | None:
    """Take a queued job: a conditional UPDATE bumps the attempt; None if it is not ours to run."""
    job = session.get(TrainingJob, job_id)
    if job is None or job.status != JobStatus.queued or job.cancel_requested:
        return None
    attempt, now = job.attempt + 1, utcnow()
    claimed = session.execute(
        update(TrainingJob)
        .where(
            TrainingJob.id == job_id,
            TrainingJob.attempt == attempt - 1,
            TrainingJob.status == JobStatus.queued,
            TrainingJob.cancel_requested.is_(False),
        )
        .values(
            status=JobStatus.running,
            attempt=attempt,
            worker=worker,
            heartbeat_at=now,
            started_at=job.started_at or now,
        )
    ).rowcount
    if not claimed:
        return None
    session.add(
        JobEvent(job_id=job_id, kind="claimed", message=f"claimed by {worker} (attempt {attempt})", attempt=attempt)
    )
    return attempt


def _fence(job_id: str, attempt: int) -> Any:
    return (TrainingJob.id == job_id) & (TrainingJob.attempt == attempt) & (TrainingJob.status == JobStatus.running)


def heartbeat(session: Session, job_id: str, attempt: int, **progress: Any) -> bool:
    """Renew the lease and record progress; returns whether a cancel was requested. Raises LostLease."""
    row = session.execute(
        update(TrainingJob)
        .where(_fence(job_id, attempt))
        .values(heartbeat_at=utcnow(), **progress)
        .returning(TrainingJob.cancel_requested)
    ).first()
    if row is None:
        raise LostLease(job_id)
    return bool(row[0])


def write_metrics(session: Session, job_id: str, attempt: int, rows: list[dict], **progress: Any) -> bool:
    """Fenced batch insert of metric rows (and a heartbeat); returns whether a cancel was requested."""
    cancel = heartbeat(session, job_id, attempt, **progress)
    if rows:
        session.execute(insert(Metric), [{"job_id": job_id, **row} for row in rows])
    return cancel


def add_event(session: Session, job_id: str, attempt: int, kind: str, message: str) -> None:
    """An event from the attempt that owns the job (fenced: a stale trainer raises LostLease)."""
    heartbeat(session, job_id, attempt)
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, attempt=attempt))


def add_event_unfenced(session: Session, job_id: str, attempt: int, kind: str, message: str) -> None:
    """An event written in the same transaction as a fenced state change (which already proved ownership)."""
    session.add(JobEvent(job_id=job_id, kind=kind, message=message, attempt=attempt))


def checkpoints_newest_first(session: Session, job_id: str) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step.desc(), Checkpoint.created_at.desc())
        )
    )


def rewind_to(session: Session, job_id: str, attempt: int, step: int, epoch: int) -> None:
    """Resuming at `step`: drop what a lost attempt logged after it, so the series has no duplicates."""
    heartbeat(session, job_id, attempt, step=step, epoch=epoch)
    session.execute(delete(Metric).where(Metric.job_id == job_id, Metric.step > step))


def drop_checkpoint(session: Session, job_id: str, checkpoint_id: str) -> None:
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.id == checkpoint_id))


def hand_back(session: Session, job_id: str, attempt: int, reason: str) -> None:
    """Give a running job back to the queue at once (worker shutting down). Raises LostLease."""
    done = session.execute(
        update(TrainingJob)
        .where(_fence(job_id, attempt))
        .values(status=JobStatus.queued, worker=None, enqueued_at=utcnow())
    ).rowcount
    if not done:
        raise LostLease(job_id)
    session.add(JobEvent(job_id=job_id, kind="handed_back", message=reason, attempt=attempt))


def record_checkpoint(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    step: int,
    epoch: int,
    key: str,
    manifest_sha256: str,
    kind: str = "evaluation",
    metric: str | None = None,
    value: float | None = None,
    best: bool = False,
) -> list[str]:
    """Record a checkpoint already complete in the store; keep the best and the newest. Returns keys to delete."""
    heartbeat(session, job_id, attempt)
    if best:
        session.execute(update(Checkpoint).where(Checkpoint.job_id == job_id).values(is_best=False))
    session.add(
        Checkpoint(
            job_id=job_id,
            step=step,
            epoch=epoch,
            storage_key=key,
            kind=kind,
            metric_name=metric,
            metric_value=value,
            is_best=best,
            manifest_sha256=manifest_sha256,
        )  # fmt: skip
    )
    session.flush()
    rows = checkpoints_newest_first(session, job_id)
    stale = [c for c in rows[1:] if not c.is_best]
    for c in stale:
        session.delete(c)
    return [c.storage_key for c in stale if c.storage_key != key]


def finish_job(session: Session, job_id: str, attempt: int, status: JobStatus, **values: Any) -> None:
    """The final state of this attempt (succeeded, failed, cancelled). Raises LostLease."""
    finished_at: datetime = utcnow()
    done = session.execute(
        update(TrainingJob).where(_fence(job_id, attempt)).values(status=status, finished_at=finished_at, **values)
    ).rowcount
    if not done:
        raise LostLease(job_id)
