"""Finding lost work: jobs whose worker stopped renewing its lease, and queued jobs whose message was lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.jobs import lifecycle
from app.jobs.lifecycle import Event, Sending
from app.jobs.tables import JobStatus, TrainingJob


@dataclass
class Reaped:
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reap(session: Session, settings: Settings, send: Callable[[str], None]) -> Reaped:
    """One pass: reclaim jobs whose lease expired, then (re-)send queued jobs not sent recently. Every change is a
    conditional UPDATE, so reapers on many workers never double-handle a job."""
    now = utcnow()
    result = Reaped()
    expired = session.scalars(
        select(TrainingJob).where(
            TrainingJob.status == JobStatus.running,
            TrainingJob.heartbeat_at < now - timedelta(seconds=settings.lease_seconds),
        )
    ).all()
    for job in expired:
        event = lifecycle.reclaim_lost(session, job, settings, now)
        if event == Event.lost_for_good:
            result.failed.append(job.id)
        elif event == Event.lost_cancelled:
            result.cancelled.append(job.id)
    session.commit()
    resend_before = now - timedelta(seconds=settings.requeue_after_seconds)
    waiting = session.scalars(
        select(TrainingJob.id).where(
            TrainingJob.status == JobStatus.queued,
            TrainingJob.cancel_requested.is_(False),
            TrainingJob.enqueued_at.is_(None) | (TrainingJob.enqueued_at < resend_before),
        )
    ).all()
    for job_id in waiting:
        sending = lifecycle.dispatch(session, job_id, send, resend_before=resend_before)
        if sending == Sending.broker_down:
            break  # the next round tries again
        if sending == Sending.sent:
            result.sent.append(job_id)
    return result


def reclaim_from_dead_worker(
    session: Session, settings: Settings, worker: str, how: str, send: Callable[[str], None]
) -> list[str]:
    """The jobs the worker process named `worker` (see worker.runner.worker_name) held when it died: reclaimed now,
    each with an event that says `how` it died, and the requeued ones sent again. Returns their ids."""
    held = session.scalars(
        select(TrainingJob).where(TrainingJob.status == JobStatus.running, TrainingJob.worker == worker)
    ).all()
    now = utcnow()
    reclaimed = []
    for job in held:
        died = f"worker {worker} {how} (attempt {job.attempt})"
        event = lifecycle.reclaim_lost(session, job, settings, now, died=died)
        if event is not None:
            reclaimed.append((job.id, event))
    session.commit()
    for job_id, event in reclaimed:
        if event == Event.lease_lost:
            lifecycle.dispatch(session, job_id, send)
    return [job_id for job_id, _ in reclaimed]
