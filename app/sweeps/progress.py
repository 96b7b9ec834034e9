"""Moving a sweep on: tell the study how finished trials ended (once each), start new trials while there is room,
and end the sweep when no more will start. The worker calls `advance` when a trial's job ends; every reaper round
calls `advance_all` as the safety net. Each step is fenced (a conditional UPDATE), so any number of processes may
advance one sweep at once."""

from __future__ import annotations

import logging
from datetime import timedelta

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import rows_changed, utcnow
from app.errors import AppError, TooManyRequests
from app.jobs import lifecycle
from app.jobs.schemas import Hyperparameters, JobCreate
from app.jobs.service import create_job
from app.jobs.tables import ACTIVE_STATUSES, FINISHED, JobEvent, JobStatus, Metric, TrainingJob
from app.public_text import public_text
from app.quotas.service import check_can_submit
from app.registry.routes import TOTAL_WEIGHT
from app.registry.service import set_alias
from app.sweeps import space, study
from app.sweeps.schemas import SweepCreate
from app.sweeps.tables import Sweep, SweepStatus, SweepTrial
from app.teams.tables import Team

log = logging.getLogger(__name__)
Send = lifecycle.Send


def spec_of(sweep: Sweep) -> SweepCreate:
    return SweepCreate.model_validate(sweep.spec)


def advance_all(session: Session, settings: Settings, store: ArtifactStore, send: Send) -> None:
    """Advance every sweep that is running or has a trial whose end the study was not told yet."""
    untold = (
        select(SweepTrial.sweep_id)
        .join(TrainingJob, TrainingJob.id == SweepTrial.job_id)
        .where(SweepTrial.told_state.is_(None), TrainingJob.status.in_(FINISHED))
    )
    ids = session.scalars(select(Sweep.id).where((Sweep.status == SweepStatus.running) | Sweep.id.in_(untold))).all()
    session.commit()
    for sweep_id in ids:
        try:
            advance(session, settings, store, send, sweep_id)
        except Exception:  # one sweep's trouble must not stop the others; the next round tries again
            session.rollback()
            log.exception("could not advance sweep %s", sweep_id)


def advance(session: Session, settings: Settings, store: ArtifactStore, send: Send, sweep_id: str) -> None:
    settle(session, settings, sweep_id)
    while start_trial(session, settings, store, send, sweep_id):
        pass
    finish_if_done(session, sweep_id)


# --- telling the study --------------------------------------------------------------------------------------------


def settle(session: Session, settings: Settings, sweep_id: str) -> None:
    """Tell the study how each finished trial ended, exactly once: Optuna refuses to finish a finished trial
    (skip_if_finished), and `told_state` is set by a conditional UPDATE."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return
    spec = spec_of(sweep)
    rows = session.execute(
        select(SweepTrial.id, SweepTrial.number, SweepTrial.job_id, TrainingJob.status)
        .outerjoin(TrainingJob, TrainingJob.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep_id, SweepTrial.told_state.is_(None))
        .where(TrainingJob.status.in_(FINISHED) | SweepTrial.job_id.is_(None))
    ).all()
    session.commit()
    for trial_id, number, job_id, status in rows:
        told, value = _outcome(session, spec, job_id, status)
        study.tell(settings, sweep.study_name, number, told, value)
        rows_changed(
            session,
            update(SweepTrial)
            .where(SweepTrial.id == trial_id, SweepTrial.told_state.is_(None))
            .values(told_state=told, value=value, told_at=utcnow()),
        )
        session.commit()


def _outcome(session: Session, spec: SweepCreate, job_id: str | None, status: str | None) -> tuple[str, float | None]:
    """What to tell the study: a succeeded trial's best objective over its evaluations (its model is the best
    checkpoint's), a pruned trial's last report, or a failure (failed, cancelled, or its job was deleted)."""
    metric = spec.objective.metric
    if status == JobStatus.pruned:
        last = session.scalar(
            select(Metric.value).where(Metric.job_id == job_id, Metric.name == metric).order_by(Metric.step.desc())
        )
        return "pruned", last
    if status == JobStatus.succeeded:
        best = func.max(Metric.value) if spec.objective.direction == "maximize" else func.min(Metric.value)
        value = session.scalar(select(best).where(Metric.job_id == job_id, Metric.name == metric))
        if value is not None:
            return "complete", float(value)
    return "fail", None


# --- starting trials ----------------------------------------------------------------------------------------------


def steps_used(session: Session, sweep_id: str) -> int:
    """Optimizer steps the sweep's trials have taken (a resumed trial's steps count once)."""
    total = session.scalar(
        select(func.coalesce(func.sum(TrainingJob.step), 0))
        .join(SweepTrial, SweepTrial.job_id == TrainingJob.id)
        .where(SweepTrial.sweep_id == sweep_id)
    )
    return int(total or 0)


def active_trials(session: Session, sweep_id: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(SweepTrial)
            .join(TrainingJob, TrainingJob.id == SweepTrial.job_id)
            .where(SweepTrial.sweep_id == sweep_id, TrainingJob.status.in_(ACTIVE_STATUSES))
        )
        or 0
    )


def trial_limit(spec: SweepCreate) -> int:
    """max_trials, or the grid's size when that is smaller."""
    return min(spec.max_trials, space.grid_size(spec)) if spec.sampler == "grid" else spec.max_trials


def why_no_more(session: Session, sweep: Sweep, spec: SweepCreate) -> str | None:
    """Why no new trial may start, ever (max_trials or the budget); None while more may."""
    if sweep.trials_started >= trial_limit(spec):
        return f"all {sweep.trials_started} trials started (max_trials {spec.max_trials})"
    if spec.budget.steps is not None and steps_used(session, sweep.id) >= spec.budget.steps:
        return f"the step budget ({spec.budget.steps}) is spent"
    if spec.budget.seconds is not None and utcnow() - sweep.created_at >= timedelta(seconds=spec.budget.seconds):
        return f"the wall-time budget ({spec.budget.seconds:g} s) is spent"
    return None


def start_trial(
    session: Session, settings: Settings, store: ArtifactStore, send: Send, sweep_id: str, *, first: bool = False
) -> bool:
    """Start one trial if the sweep has room (parallelism, max_trials, budget, the team's job limit); True if one
    was started or refused (try again), False when there is no room now.

    The `first` trial of a new sweep raises what its job's checks raise, so POST /sweeps answers with it."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.status != SweepStatus.running:
        return False
    spec = spec_of(sweep)
    if active_trials(session, sweep_id) >= spec.parallelism or why_no_more(session, sweep, spec):
        return False
    team = session.get(Team, sweep.team_id)
    assert team is not None
    try:
        check_can_submit(session, settings, team)
    except TooManyRequests:
        if first:
            raise
        session.rollback()
        return False  # a later round starts it
    seen = sweep.trials_started
    taken = rows_changed(
        session,
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.trials_started == seen, Sweep.status == SweepStatus.running)
        .values(trials_started=seen + 1),
    )
    if not taken:
        session.rollback()
        return True  # another process started one: look again
    number, optuna_id, params = study.ask(settings, sweep.study_name, spec)

    def link(job: TrainingJob) -> None:
        session.add(
            SweepTrial(sweep_id=sweep_id, number=number, optuna_trial_id=optuna_id, job_id=job.id, params=params)
        )
        chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        message = f"trial {number} of sweep {sweep_id}: {chosen}"
        session.add(JobEvent(job_id=job.id, kind="sweep_trial", message=public_text(message)))

    try:
        fixed = spec.hyperparameters.model_dump(mode="json", exclude_unset=True)
        # The trial's best checkpoint (its model) is chosen on the objective, unless early stopping was fixed.
        fixed.setdefault("early_stopping", {"metric": spec.objective.metric})
        hp = Hyperparameters.model_validate({**fixed, **params})
        job_spec = JobCreate(dataset_id=spec.dataset_id, base_model=spec.base_model, hyperparameters=hp)
        create_job(session, send, settings, store, sweep.team_id, job_spec, link)
    except (AppError, ValidationError) as exc:
        session.rollback()
        if first:
            raise
        _reject(session, settings, sweep, number, optuna_id, params, exc)
    return True


def _reject(
    session: Session, settings: Settings, sweep: Sweep, number: int, optuna_id: int, params: dict, exc: Exception
) -> None:
    """A trial whose hyperparameters no job accepts: recorded with the reason, told to the study as failed."""
    detail = exc.detail if isinstance(exc, AppError) else "; ".join(e["msg"] for e in exc.errors())  # type: ignore[attr-defined]
    session.execute(update(Sweep).where(Sweep.id == sweep.id).values(trials_started=Sweep.trials_started + 1))
    session.add(
        SweepTrial(
            sweep_id=sweep.id,
            number=number,
            optuna_trial_id=optuna_id,
            params=params,
            error=detail,
            told_state="fail",
            told_at=utcnow(),
        )  # fmt: skip
    )
    session.commit()
    study.tell(settings, sweep.study_name, number, "fail", None)


# --- the end ------------------------------------------------------------------------------------------------------


def best_trial(session: Session, sweep: Sweep) -> SweepTrial | None:
    """The completed trial with the best objective (the earlier one on a tie)."""
    value = SweepTrial.value.desc() if spec_of(sweep).objective.direction == "maximize" else SweepTrial.value.asc()
    return session.scalar(
        select(SweepTrial)
        .where(SweepTrial.sweep_id == sweep.id, SweepTrial.told_state == "complete")
        .order_by(value, SweepTrial.number)
        .limit(1)
    )


def finish_if_done(session: Session, sweep_id: str) -> None:
    """End a running sweep once no trial runs, none waits to be told, and no more may start; promote its best."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None or sweep.status != SweepStatus.running:
        return
    spec = spec_of(sweep)
    untold = session.scalar(
        select(func.count()).where(SweepTrial.sweep_id == sweep_id, SweepTrial.told_state.is_(None))
    )
    reason = why_no_more(session, sweep, spec)
    if untold or active_trials(session, sweep_id) or reason is None:
        session.commit()
        return
    best = best_trial(session, sweep)
    status = SweepStatus.succeeded if best else SweepStatus.failed
    if best is None:
        reason += "; no trial completed"
    ended = rows_changed(
        session,
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status == SweepStatus.running)
        .values(status=status, stop_reason=reason, finished_at=utcnow()),
    )
    if ended and best is not None and spec.promote_alias:
        _promote(session, sweep, best, spec.promote_alias)
    session.commit()


def _promote(session: Session, sweep: Sweep, best: SweepTrial, alias: str) -> None:
    model_id = session.scalar(select(TrainingJob.model_id).where(TrainingJob.id == best.job_id))
    if model_id is None:
        note = f"; not promoted: trial {best.number} has no model"
    else:
        try:
            with session.begin_nested():
                set_alias(session, sweep.team_id, alias, [(model_id, TOTAL_WEIGHT)])
            note = f"; alias '{alias}' now serves trial {best.number}'s model"
            session.execute(update(Sweep).where(Sweep.id == sweep.id).values(promoted_model_id=model_id))
        except AppError as exc:
            note = f"; not promoted to '{alias}': {exc.detail}"
    session.execute(update(Sweep).where(Sweep.id == sweep.id).values(stop_reason=Sweep.stop_reason + note))


def trial_of_job(session: Session, job_id: str) -> tuple[str, str, int, SweepCreate] | None:
    """(sweep id, study name, Optuna trial id, sweep spec) of a trial's job; None for a job outside any sweep. A
    resumed job finds the same trial here, so it reports to the same Optuna trial."""
    row = session.execute(
        select(Sweep, SweepTrial.optuna_trial_id)
        .join(SweepTrial, SweepTrial.sweep_id == Sweep.id)
        .where(SweepTrial.job_id == job_id)
    ).first()
    if row is None:
        return None
    sweep, optuna_id = row
    return sweep.id, sweep.study_name, optuna_id, spec_of(sweep)
