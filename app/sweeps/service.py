"""Sweep rules: create (check the space, create the study, start the first trials), read, list, cancel."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.datasets.service import get_dataset
from app.db import new_id, rows_changed, utcnow
from app.errors import Conflict, NotFound
from app.jobs import lifecycle
from app.jobs.tables import ACTIVE_STATUSES, TrainingJob
from app.pagination import PageParams, newest_first
from app.sweeps import progress, space, study
from app.sweeps.schemas import BestTrial, BudgetUsed, Importances, SweepCreate, SweepRead, TrialRead
from app.sweeps.tables import Sweep, SweepStatus, SweepTrial
from app.teams.tables import Team

MIN_TRIALS_FOR_IMPORTANCE = 3


def create_sweep(
    session: Session, send: lifecycle.Send, settings: Settings, store: ArtifactStore, team: Team,
    spec: SweepCreate,
) -> Sweep:  # fmt: skip
    """Check the spec, create the sweep and its study, and start its first `parallelism` trials. The first trial's
    job goes through every check of POST /jobs (quota, spec, memory): if it is refused, so is the sweep."""
    space.check_sweep(spec)
    get_dataset(session, team.id, spec.dataset_id)
    sweep_id = new_id()
    name = f"sweep-{sweep_id}"
    sweep = Sweep(
        id=sweep_id, team_id=team.id, dataset_id=spec.dataset_id, base_model=spec.base_model,
        spec=spec.model_dump(mode="json", exclude_unset=False), study_name=name,
    )  # fmt: skip
    # The fixed hyperparameters the user set stay "set" for each trial's job (its spec checks tell them apart).
    sweep.spec["hyperparameters"] = spec.hyperparameters.model_dump(mode="json", exclude_unset=True)
    session.add(sweep)
    session.flush()
    study.create_study(settings, name, spec)
    try:
        progress.start_trial(session, settings, store, send, sweep_id, first=True)
    except BaseException:
        session.rollback()
        study.delete_study(settings, name)
        raise
    for _ in range(spec.parallelism - 1):
        if not progress.start_trial(session, settings, store, send, sweep_id):
            break
    session.refresh(sweep)
    return sweep


def get_sweep(session: Session, team_id: str, sweep_id: str) -> Sweep:
    """The team's sweep, or 404 (another team's answers exactly like a missing one)."""
    sweep = session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.team_id == team_id))
    if sweep is None:
        raise NotFound(f"No sweep '{sweep_id}'. List yours with GET /sweeps.")
    return sweep


def list_sweeps(session: Session, team_id: str, page: PageParams) -> tuple[list[Sweep], str | None]:
    anchor = get_sweep(session, team_id, page.cursor) if page.cursor else None
    return newest_first(session, select(Sweep).where(Sweep.team_id == team_id), Sweep, anchor, page.limit)


def cancel_sweep(session: Session, settings: Settings, sweep: Sweep) -> Sweep:
    """No new trials; queued trials are cancelled at once, running ones at their next step."""
    if sweep.status not in (SweepStatus.running, SweepStatus.cancelled):
        raise Conflict(f"Sweep '{sweep.id}' already {sweep.status}; only a running sweep can be cancelled.")
    rows_changed(
        session,
        update(Sweep)
        .where(Sweep.id == sweep.id, Sweep.status == SweepStatus.running)
        .values(status=SweepStatus.cancelled, stop_reason="cancelled", finished_at=utcnow()),
    )
    jobs = session.scalars(
        select(TrainingJob)
        .join(SweepTrial, SweepTrial.job_id == TrainingJob.id)
        .where(SweepTrial.sweep_id == sweep.id, TrainingJob.status.in_(ACTIVE_STATUSES))
    ).all()
    for job in jobs:
        lifecycle.request_cancel(session, job)
    session.commit()
    progress.settle(session, settings, sweep.id)  # the queued ones are cancelled already
    session.refresh(sweep)
    return sweep


def view(session: Session, sweep: Sweep) -> SweepRead:
    """The sweep with its trial counts by state, best trial so far and budget used."""
    spec = progress.spec_of(sweep)
    counts = dict(
        session.execute(
            select(TrainingJob.status, func.count())
            .join(SweepTrial, SweepTrial.job_id == TrainingJob.id)
            .where(SweepTrial.sweep_id == sweep.id)
            .group_by(TrainingJob.status)
        ).all()
    )
    rejected = session.scalar(
        select(func.count()).where(SweepTrial.sweep_id == sweep.id, SweepTrial.error.is_not(None))
    )
    if rejected:
        counts["rejected"] = rejected
    best = progress.best_trial(session, sweep)
    best_view = None
    if best is not None and best.value is not None:
        model_id = session.scalar(select(TrainingJob.model_id).where(TrainingJob.id == best.job_id))
        best_view = BestTrial(
            number=best.number, job_id=best.job_id, model_id=model_id, hyperparameters=best.params,
            objective=best.value,
        )  # fmt: skip
    elapsed = ((sweep.finished_at or utcnow()) - sweep.created_at).total_seconds()
    budget = BudgetUsed(
        steps=progress.steps_used(session, sweep.id), steps_limit=spec.budget.steps,
        seconds=round(elapsed, 3), seconds_limit=spec.budget.seconds,
    )  # fmt: skip
    return SweepRead(
        id=sweep.id, status=sweep.status, dataset_id=sweep.dataset_id, base_model=sweep.base_model, spec=sweep.spec,
        trials_started=sweep.trials_started, counts=counts, best_trial=best_view, budget_used=budget,
        stop_reason=sweep.stop_reason, promoted_model_id=sweep.promoted_model_id, created_at=sweep.created_at,
        finished_at=sweep.finished_at,
    )  # fmt: skip


def list_trials(session: Session, sweep: Sweep) -> list[TrialRead]:
    """Every trial in the order started, with its job's state and steps."""
    rows = session.execute(
        select(SweepTrial, TrainingJob)
        .outerjoin(TrainingJob, TrainingJob.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id)
        .order_by(SweepTrial.number)
    ).all()
    return [
        TrialRead(
            number=trial.number,
            job_id=trial.job_id,
            status=job.status if job else ("rejected" if trial.error else "deleted"),
            hyperparameters=trial.params,
            objective=trial.value,
            told=trial.told_state,
            steps=job.step if job else 0,
            model_id=job.model_id if job else None,
            error=trial.error,
            created_at=trial.created_at,
        )  # fmt: skip
        for trial, job in rows
    ]


def importances(session: Session, settings: Settings, sweep: Sweep) -> Importances:
    """Which searched hyperparameters mattered (fANOVA over the completed trials); 409 until enough completed."""
    completed = session.scalar(
        select(func.count()).where(SweepTrial.sweep_id == sweep.id, SweepTrial.told_state == "complete")
    )
    if (completed or 0) < MIN_TRIALS_FOR_IMPORTANCE:
        raise Conflict(
            f"Sweep '{sweep.id}' has {completed} completed trials; parameter importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCE}. Ask again when more have finished (GET /sweeps/{sweep.id})."
        )
    try:
        count, found = study.importances(settings, sweep.study_name, progress.spec_of(sweep).seed)
    except study.NoVariance as exc:
        raise Conflict(
            f"Sweep '{sweep.id}': {exc}, so no hyperparameter explains a difference; importances need trials that "
            "score differently."
        ) from None
    return Importances(completed_trials=count, importances=found)
