"""Finding lost work: jobs whose worker stopped renewing its lease, and queued jobs whose message was lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.fleet.service import forget_old_workers
from app.jobs import lifecycle, scheduling
from app.jobs.lifecycle import Event, Send, Sending
from app.jobs.tables import JobStatus, TrainingJob


@dataclass
class Reaped:
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


def reap(session: Session, settings: Settings, send: Send) -> Reaped:
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
            return result  # the next round tries again
        if sending == Sending.sent:
            result.sent.append(job_id)
    result.sent.extend(wake_idle_pools(session, settings, send))
    return result


def wake_idle_pools(session: Session, settings: Settings, send: Send) -> list[str]:
    """A message is a wake-up, and a job can outwait its own (it was capped when its message came, or another
    pool's job freed its team's cap): wake each pool that has an idle live worker and a job that worker could claim.
    Returns the jobs whose messages were sent."""
    now = utcnow()
    recently = now - timedelta(seconds=settings.reaper_interval_seconds)  # of many reapers, one wakes it per round
    busy = set(session.scalars(select(TrainingJob.worker).where(TrainingJob.status == JobStatus.running)))
    idle: dict[str, int] = {}
    for worker in scheduling.alive_workers(session, settings, None, now):
        if worker.name not in busy:
            idle[worker.pool] = max(idle.get(worker.pool, 0), worker.devices)
    woken = []
    for pool, devices in sorted(idle.items()):
        first = next(iter(scheduling.candidates(session, settings, pool, devices)), None)
        if first is not None and lifecycle.dispatch(session, first.id, send, resend_before=recently) == Sending.sent:
            woken.append(first.id)
    forget_old_workers(session, settings)
    session.commit()
    return woken


def reclaim_from_dead_worker(session: Session, settings: Settings, worker: str, how: str, send: Send) -> list[str]:
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
