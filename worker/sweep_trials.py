"""A worker's part in sweeps: link a trial's job to its Optuna trial, and move the sweep on when the trial ends."""

from __future__ import annotations

import logging

from app.jobs.lifecycle import Send
from app.sweeps import progress
from app.sweeps.study import TrialReporter
from worker.context import JobContext

log = logging.getLogger(__name__)


def open_trial(ctx: JobContext) -> tuple[str, TrialReporter | None] | None:
    """(sweep id, the reporter of its evaluations) when the job is a sweep trial, else None."""
    link = ctx.transact("sweep trial", lambda session: progress.trial_of_job(session, ctx.job_id))
    if link is None:
        return None
    sweep_id, study_name, optuna_trial_id, spec = link
    try:
        return sweep_id, TrialReporter(ctx.settings, study_name, optuna_trial_id, spec)
    except Exception as exc:  # the study's storage unreachable: train unpruned; its end is still told (progress.py)
        log.warning("job %s: cannot reach its study %s (%s); training without pruning", ctx.job_id, study_name, exc)
        return sweep_id, None


def after_trial(ctx: JobContext, sweep_id: str, send: Send) -> None:
    """The trial's job ended: tell the study and start the next trials (the reaper does it too, should this fail)."""
    try:
        with ctx.db.session() as session:
            progress.advance(session, ctx.settings, ctx.store, send, sweep_id)
    except Exception:
        log.exception("job %s: could not advance sweep %s; the reaper will", ctx.job_id, sweep_id)
