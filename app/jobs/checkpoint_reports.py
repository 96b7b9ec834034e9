"""Evaluation reports of any checkpoint, on request: GET /jobs/{id}/report?checkpoint=<id or step>.

The best checkpoint of a succeeded job answers with the job's own report at once (it was computed on those weights).
Any other checkpoint needs its weights loaded and the test split run through them: that takes a worker (the API
holds no models for training jobs), seconds for a small test split, minutes for a large one, and longer when every
worker is busy training. So the first request queues it on the workers' queue and answers 202 with the URL to poll
(the same one); it answers 202 while the report is queued or running, then 200 with the report, kept with the
checkpoint row. A request still queued or running after STALE_AFTER was lost with its worker and is sent again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.db import rows_changed, utcnow
from app.errors import AppError, Conflict, NotFound
from app.jobs.tables import Checkpoint, JobStatus, TrainingJob

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(minutes=15)
POLL_AFTER_S = 2


class ReportStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


def find_checkpoint(session: Session, job: TrainingJob, ref: str) -> Checkpoint:
    """The job's checkpoint with id `ref`, or at step `ref`; a 404 naming those that exist."""
    rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step)))
    for row in rows:
        if row.id == ref or (ref.isdigit() and row.step == int(ref)):
            return row
    known = ", ".join(f"{c.id} (step {c.step}{', best' if c.is_best else ''})" for c in rows) or "none"
    raise NotFound(
        f"Job '{job.id}' has no checkpoint '{ref}'; pass a checkpoint id or step. Its checkpoints: {known} "
        f"(GET /jobs/{job.id}/checkpoints; a job keeps its best and its newest).",
        extra={"checkpoints": [describe(c) for c in rows]},
    )


def describe(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"id": checkpoint.id, "step": checkpoint.step, "epoch": checkpoint.epoch, "is_best": checkpoint.is_best}


def checkpoint_report(
    session: Session, job: TrainingJob, ref: str, send: Callable[[str, str], None]
) -> tuple[int, dict[str, Any]]:
    """(200, the report) when it exists, else (202, where to poll) after queueing it if nobody has."""
    checkpoint = find_checkpoint(session, job, ref)
    if checkpoint.is_best and job.status == JobStatus.succeeded and job.report is not None:
        return 200, {**job.report, "checkpoint": describe(checkpoint)}
    if checkpoint.report_status == ReportStatus.done and checkpoint.report is not None:
        return 200, checkpoint.report
    if checkpoint.report_status == ReportStatus.failed:
        raise Conflict(
            f"The report of checkpoint {checkpoint.id} (step {checkpoint.step}) could not be computed: "
            f"{checkpoint.report_error}"
        )
    if _queue(session, checkpoint.id):
        try:
            send(checkpoint.id, job.pool)
        except Exception as exc:  # the broker is down: leave it unrequested, so the next request sends it
            log.warning("could not send the report of checkpoint %s: %s", checkpoint.id, exc)
            session.execute(update(Checkpoint).where(Checkpoint.id == checkpoint.id).values(report_status=None))
            session.commit()
            raise AppError(
                "The workers' queue is unreachable, so the report cannot be computed now; try again shortly.",
                status=503, title="Service unavailable", headers={"Retry-After": "10"},
            ) from exc  # fmt: skip
    session.refresh(checkpoint)
    return 202, {
        "status": checkpoint.report_status,
        "checkpoint": describe(checkpoint),
        "poll": f"/jobs/{job.id}/report?checkpoint={checkpoint.id}",
        "detail": "A worker computes this checkpoint's report on the test split; poll the same URL until it answers "
        "200 with the report.",
    }


def _queue(session: Session, checkpoint_id: str) -> bool:
    """Mark the report queued unless it already is (and not stale); commits; True if this request must send it."""
    now = utcnow()
    waiting = Checkpoint.report_status.in_([ReportStatus.queued, ReportStatus.running])
    taken = rows_changed(
        session,
        update(Checkpoint)
        .where(
            Checkpoint.id == checkpoint_id,
            or_(Checkpoint.report_status.is_(None), waiting & (Checkpoint.report_requested_at < now - STALE_AFTER)),
        )
        .values(report_status=ReportStatus.queued, report_requested_at=now, report_error=None),
    )
    session.commit()
    return bool(taken)


@dataclass(frozen=True)
class ReportRequest:
    """What a worker needs to compute a checkpoint's report (nothing ORM crosses into the worker's run)."""

    job_id: str
    storage_key: str
    checkpoint: dict[str, Any]  # describe(): id, step, epoch, is_best


def claim(session: Session, checkpoint_id: str) -> ReportRequest | None:
    """A worker takes a queued report; None if it is not queued (done, taken, or the checkpoint is gone)."""
    taken = rows_changed(
        session,
        update(Checkpoint)
        .where(Checkpoint.id == checkpoint_id, Checkpoint.report_status == ReportStatus.queued)
        .values(report_status=ReportStatus.running),
    )
    checkpoint = session.get(Checkpoint, checkpoint_id) if taken else None
    if checkpoint is None:
        return None
    return ReportRequest(checkpoint.job_id, checkpoint.storage_key, describe(checkpoint))


def save(session: Session, checkpoint_id: str, report: dict[str, Any]) -> None:
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.id == checkpoint_id)
        .values(report_status=ReportStatus.done, report=report, report_error=None)
    )


def fail(session: Session, checkpoint_id: str, error: str) -> None:
    session.execute(
        update(Checkpoint)
        .where(Checkpoint.id == checkpoint_id)
        .values(report_status=ReportStatus.failed, report_error=error)
    )
