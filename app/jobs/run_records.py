"""What an attempt writes while it owns a job: metrics, events and checkpoint rows, each fenced by its lease."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from app.jobs.lifecycle import heartbeat
from app.jobs.tables import Checkpoint, JobEvent, Metric, TrainingJob
from app.public_text import public_text


def write_metrics(session: Session, job_id: str, attempt: int, rows: list[dict], **progress: Any) -> bool:
    """Fenced batch insert of metric rows (and a heartbeat); returns whether a cancel was requested."""
    cancel = heartbeat(session, job_id, attempt, **progress)
    if rows:
        session.execute(insert(Metric), [{"job_id": job_id, **row} for row in rows])
    return cancel


def add_event(session: Session, job_id: str, attempt: int, kind: str, message: str) -> None:
    """An event from the attempt that owns the job (a stale trainer raises LostLease)."""
    heartbeat(session, job_id, attempt)
    session.add(JobEvent(job_id=job_id, kind=kind, message=public_text(message), attempt=attempt))


def record_auto(session: Session, job_id: str, attempt: int, name: str, reason: str) -> None:
    """What a setting the worker decides (precision: only it knows its device) became, and why, in the stored spec's
    `auto`, beside what the API decided at submit."""
    heartbeat(session, job_id, attempt)
    stored = session.scalar(select(TrainingJob.hyperparameters).where(TrainingJob.id == job_id)) or {}
    updated = {**stored, "auto": {**stored.get("auto", {}), name: public_text(reason)}}
    session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(hyperparameters=updated))


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
    size_bytes: int | None = None,
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
            size_bytes=size_bytes,
        )  # fmt: skip
    )
    session.flush()
    rows = checkpoints_newest_first(session, job_id)
    stale = [c for c in rows[1:] if not c.is_best]
    for c in stale:
        session.delete(c)
    return [c.storage_key for c in stale if c.storage_key != key]
