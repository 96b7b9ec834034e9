"""Every change of a job's status, in one module: the table below is the whole state machine.

    from      event            to          who      function
    ----      -----            --          ---      --------
    (new)     submit           queued      API      submit
    queued    cancel           cancelled   API      request_cancel
    running   cancel           running     API      request_cancel (a flag; the worker stops at a step boundary)
    queued    claim            running     worker   claim_next (the job app/jobs/scheduling.py puts first), claim
    running   succeed          succeeded   worker   finish
    running   fail             failed      worker   finish
    running   stop_cancelled   cancelled   worker   finish
    running   prune            pruned      worker   finish (a sweep trial its study's pruner stopped)
    running   hand_back        queued      worker   hand_back (SIGTERM: checkpointed, back to the queue)
    running   lease_lost       queued      reaper   reclaim_lost (resumes from its last checkpoint)
    running   lost_cancelled   cancelled   reaper   reclaim_lost (its worker died while it was being cancelled)
    running   lost_for_good    failed      reaper   reclaim_lost (after FINETUNE_MAX_RESTARTS lost workers)

Each transition is one conditional UPDATE on the status the table names (`_move`), so two processes can never both
make one; a worker's are also fenced by its attempt number and raise LostLease when the job is no longer its own.
A queued job reaches the broker only through `dispatch`, called after the commit, which stamps `enqueued_at`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from app.config import DEFAULT_POOL, Settings
from app.db import rows_changed, utcnow
from app.errors import Conflict
from app.fleet.tables import FleetWorker
from app.jobs import scheduling
from app.jobs.stop_reasons import LostLease
from app.jobs.tables import DeviceUsage, JobEvent, JobStatus, TrainingJob
from app.public_text import public_text
from app.teams.tables import Team

log = logging.getLogger(__name__)


class Event(StrEnum):
    submit = "submit"
    cancel = "cancel"
    claim = "claim"
    succeed = "succeed"
    fail = "fail"
    stop_cancelled = "stop_cancelled"
    prune = "prune"
    hand_back = "hand_back"
    lease_lost = "lease_lost"
    lost_cancelled = "lost_cancelled"
    lost_for_good = "lost_for_good"


@dataclass(frozen=True)
class Transition:
    source: JobStatus | None  # None: the job does not exist yet
    target: JobStatus
    who: str


TRANSITIONS: dict[Event, Transition] = {
    Event.submit: Transition(None, JobStatus.queued, "API"),
    Event.cancel: Transition(JobStatus.queued, JobStatus.cancelled, "API"),
    Event.claim: Transition(JobStatus.queued, JobStatus.running, "worker"),
    Event.succeed: Transition(JobStatus.running, JobStatus.succeeded, "worker"),
    Event.fail: Transition(JobStatus.running, JobStatus.failed, "worker"),
    Event.stop_cancelled: Transition(JobStatus.running, JobStatus.cancelled, "worker"),
    Event.prune: Transition(JobStatus.running, JobStatus.pruned, "worker"),
    Event.hand_back: Transition(JobStatus.running, JobStatus.queued, "worker"),
    Event.lease_lost: Transition(JobStatus.running, JobStatus.queued, "reaper"),
    Event.lost_cancelled: Transition(JobStatus.running, JobStatus.cancelled, "reaper"),
    Event.lost_for_good: Transition(JobStatus.running, JobStatus.failed, "reaper"),
}
# What the event row a finishing worker writes is called.
FINISH_EVENT_KIND = {
    Event.succeed: "succeeded",
    Event.fail: "failed",
    Event.stop_cancelled: "cancelled",
    Event.prune: "pruned",
}


def _move(session: Session, job_id: str, event: Event, *where: ColumnElement[bool], **values: Any) -> bool:
    """Apply `event` to the job if it is in the table's source state (and `where` holds); True if it moved."""
    t = TRANSITIONS[event]
    statement = (
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == t.source, *where)
        .values(status=t.target, **values)
    )
    return rows_changed(session, statement) == 1


def _event(session: Session, job_id: str, kind: str, message: str, attempt: int = 0) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=public_text(message), attempt=attempt))


# --- the API ------------------------------------------------------------------------------------------------------


def submit(
    session: Session,
    *,
    team_id: str,
    dataset_id: str,
    task: str,
    base_model: str,
    hyperparameters: dict,
    priority: str = "normal",
    pool: str = DEFAULT_POOL,
    gpus: int = 1,
) -> TrainingJob:
    """A new job row, queued (not yet sent: `dispatch` it after the commit)."""
    job = TrainingJob(
        team_id=team_id, dataset_id=dataset_id, task=task, base_model=base_model, hyperparameters=hyperparameters,
        priority=priority, pool=pool, gpus=gpus, status=TRANSITIONS[Event.submit].target,
    )  # fmt: skip
    session.add(job)
    session.flush()
    _event(session, job.id, "queued", f"queued: {base_model} on dataset {dataset_id}")
    return job


def request_cancel(session: Session, job: TrainingJob) -> TrainingJob:
    """A queued job is cancelled at once; a running one is flagged and its worker stops at the next step."""
    if job.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.pruned):
        raise Conflict(f"Job '{job.id}' already {job.status}; only queued or running jobs can be cancelled.")
    if job.status == JobStatus.cancelled:
        return job
    session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(cancel_requested=True))
    _move(session, job.id, Event.cancel, finished_at=utcnow())
    _event(session, job.id, "cancel_requested", "cancel requested", job.attempt)
    session.flush()
    session.refresh(job)
    return job


# Wakes a worker of a pool: (job id, pool). The message is a hint: the worker claims whatever job the scheduling rule
# puts first in its pool, which may be another one (see worker/runner.py).
Send = Callable[[str, str], None]


class Sending(StrEnum):
    sent = "sent"
    skipped = "skipped"  # not queued any more, or sent recently (by another reaper)
    broker_down = "broker_down"


def dispatch(session: Session, job_id: str, send: Send, *, resend_before: datetime | None = None) -> Sending:
    """The one way a queued job's id reaches the broker (its pool's queue); call it with the job row committed.

    Stamps `enqueued_at` with a conditional UPDATE (of several reapers, one sends), commits, then sends. If the
    broker is down the stamp is cleared, so the next reaper round sends it again."""
    not_sent: ColumnElement[bool] = TrainingJob.enqueued_at.is_(None)
    if resend_before is not None:
        not_sent = not_sent | (TrainingJob.enqueued_at < resend_before)
    stamp = utcnow()
    pool = session.scalar(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued, not_sent)
        .values(enqueued_at=stamp)
        .returning(TrainingJob.pool)
    )
    session.commit()
    if pool is None:
        return Sending.skipped
    try:
        send(job_id, pool)
    except Exception as exc:  # any broker failure: the job stays queued and is re-sent later
        log.warning("could not send job %s to the broker: %s", job_id, exc)
        session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.enqueued_at == stamp)
            .values(enqueued_at=None)
        )
        if resend_before is None:  # the first send says so once; the reaper's retries only log
            _event(session, job_id, "enqueue_failed", f"the broker is unreachable ({exc.__class__.__name__}); "
                   "the job stays queued and will be sent when it is back")  # fmt: skip
        session.commit()
        return Sending.broker_down
    return Sending.sent


# --- a worker -----------------------------------------------------------------------------------------------------


def claim(session: Session, job_id: str, worker: str) -> int | None:
    """Take this queued job by bumping its attempt; returns the attempt, or None if it is not ours to run."""
    job = session.get(TrainingJob, job_id)
    if job is None or job.status != JobStatus.queued or job.cancel_requested:
        return None
    return _take(session, job_id, job.attempt, worker)


@dataclass(frozen=True)
class Claimed:
    job_id: str
    attempt: int


def claim_next(session: Session, settings: Settings, worker: str, pool: str, devices: int) -> Claimed | None:
    """Claim the job the scheduling rule (app/jobs/scheduling.py) puts first among those this worker can run: its
    pool, at most its devices, a team below its cap. None when there is none. Commit right after.

    Exactly once under many workers: each candidate is locked with FOR UPDATE SKIP LOCKED on PostgreSQL (workers
    claiming at once take different jobs), its team row is locked while its running jobs are counted (caps hold),
    and the claim itself is the conditional UPDATE fenced by the attempt. On SQLite the first statement is a write,
    which takes the database's write lock: claims there are serial."""
    session.execute(
        update(FleetWorker).where(FleetWorker.name == worker).values(heartbeat_at=utcnow())
    )  # the claim is a sign of life; on SQLite it also takes the write lock before anything is read
    for job in scheduling.candidates(session, settings, pool, devices):
        if not _lock_queued(session, job.id) or _at_cap(session, settings, job.team_id):
            continue
        attempt = _take(session, job.id, job.attempt, worker)
        if attempt is not None:
            return Claimed(job.id, attempt)
    return None


def _lock_queued(session: Session, job_id: str) -> bool:
    """Lock the job if it is still queued and no other claim holds it (SKIP LOCKED; on SQLite: a plain read)."""
    query = select(TrainingJob.id).where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued)
    return session.scalar(query.with_for_update(skip_locked=True)) is not None


def _at_cap(session: Session, settings: Settings, team_id: str) -> bool:
    """Whether the team already runs its cap of jobs; its row stays locked until the claim commits (PostgreSQL)."""
    cap = session.scalar(select(Team.max_running_jobs).where(Team.id == team_id).with_for_update())
    cap = cap or settings.team_max_running_jobs
    if cap is None:
        return False
    running = session.scalar(
        select(func.count()).where(TrainingJob.team_id == team_id, TrainingJob.status == JobStatus.running)
    )
    return (running or 0) >= cap


def _take(session: Session, job_id: str, attempt_before: int, worker: str) -> int | None:
    """The claim: queued to running, fenced by the attempt it read; opens the attempt's device-usage record."""
    attempt, now = attempt_before + 1, utcnow()
    claimed = _move(
        session, job_id, Event.claim, TrainingJob.attempt == attempt_before, TrainingJob.cancel_requested.is_(False),
        attempt=attempt, worker=worker, heartbeat_at=now, started_at=func.coalesce(TrainingJob.started_at, now),
    )  # fmt: skip
    if not claimed:
        return None
    row = session.execute(select(TrainingJob.team_id, TrainingJob.gpus).where(TrainingJob.id == job_id)).one()
    session.add(DeviceUsage(team_id=row.team_id, job_id=job_id, attempt=attempt, devices=row.gpus, started_at=now))
    _event(session, job_id, "claimed", f"claimed by {worker} (attempt {attempt})", attempt)
    return attempt


def _release(session: Session, job_id: str, attempt: int, at: datetime) -> None:
    """Close the attempt's device-usage record: it held its devices until `at`."""
    session.execute(
        update(DeviceUsage)
        .where(DeviceUsage.job_id == job_id, DeviceUsage.attempt == attempt, DeviceUsage.ended_at.is_(None))
        .values(ended_at=at)
    )


def owned_by(job_id: str, attempt: int) -> ColumnElement[bool]:
    """The fence of every write a worker makes after its claim: still this attempt, still running."""
    return (TrainingJob.id == job_id) & (TrainingJob.attempt == attempt) & (TrainingJob.status == JobStatus.running)


def heartbeat(session: Session, job_id: str, attempt: int, **progress: Any) -> bool:
    """Renew the lease and record progress; returns whether a cancel was requested. Raises LostLease."""
    row = session.execute(
        update(TrainingJob)
        .where(owned_by(job_id, attempt))
        .values(heartbeat_at=utcnow(), **progress)
        .returning(TrainingJob.cancel_requested)
    ).first()
    if row is None:
        raise LostLease(job_id)
    return bool(row[0])


def finish(session: Session, job_id: str, attempt: int, event: Event, message: str, **values: Any) -> None:
    """This attempt's final state (succeed, fail, stop_cancelled, prune) and its event. Raises LostLease."""
    if event not in FINISH_EVENT_KIND:
        raise ValueError(f"{event} does not finish a job")
    now = utcnow()
    if not _move(session, job_id, event, TrainingJob.attempt == attempt, finished_at=now, **values):
        raise LostLease(job_id)
    _release(session, job_id, attempt, now)
    _event(session, job_id, FINISH_EVENT_KIND[event], message, attempt)


def hand_back(session: Session, job_id: str, attempt: int, reason: str) -> None:
    """Give a running job back to the queue (this worker is shutting down); `dispatch` it next. Raises LostLease."""
    if not _move(session, job_id, Event.hand_back, TrainingJob.attempt == attempt, worker=None, enqueued_at=None):
        raise LostLease(job_id)
    _release(session, job_id, attempt, utcnow())
    _event(session, job_id, "handed_back", reason, attempt)


# --- the reaper ---------------------------------------------------------------------------------------------------


def reclaim_lost(
    session: Session, job: TrainingJob, settings: Settings, now: datetime, *, died: str | None = None
) -> Event | None:
    """A running job whose lease expired: requeue it, or end it if it was being cancelled or has used up its
    restarts. Returns the event applied, None if another reaper (or a late heartbeat) got there first.

    `died`: the supervisor of `finetune up` saw this job's worker process exit and says how; the job is reclaimed at
    once (fenced by its attempt and worker) instead of after its lease expires."""
    lost = died or f"worker {job.worker} stopped renewing its lease (attempt {job.attempt})"
    values: dict[str, Any] = {"finished_at": now}
    if job.cancel_requested:
        event, kind, message = (
            Event.lost_cancelled,
            "cancelled",
            f"{lost}; it was being cancelled, so it stays cancelled",
        )
    elif job.attempt > settings.max_restarts:
        event, kind = Event.lost_for_good, "failed"
        message = f"{lost}; gave up after {settings.max_restarts} restarts (FINETUNE_MAX_RESTARTS)"
        values["error"] = message
    else:
        event, kind, message = Event.lease_lost, "requeued", f"{lost}; requeued to resume from its last checkpoint"
        values = {"worker": None, "enqueued_at": None}
    if died is None:
        lease_cutoff = now - timedelta(seconds=settings.lease_seconds)
        fence = (TrainingJob.attempt == job.attempt, TrainingJob.heartbeat_at < lease_cutoff)
    else:
        fence = (TrainingJob.attempt == job.attempt, TrainingJob.worker == job.worker)
    if not _move(session, job.id, event, *fence, **values):
        return None
    _release(session, job.id, job.attempt, min(job.heartbeat_at or now, now))  # it held them until it went silent
    _event(session, job.id, kind, message, job.attempt)
    return event
