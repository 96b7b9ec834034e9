"""Job rules: submit, read, and the run's metrics, checkpoints and events; the spec a worker runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session

from app.artifacts.layout import job_key
from app.artifacts.store import ArtifactStore
from app.base_models.resolve import BaseModelRef, check_base_model, find_base_model
from app.config import Settings
from app.datasets.service import get_dataset, train_rows
from app.datasets.tables import Dataset
from app.errors import Conflict, NotFound
from app.fleet.service import check_resources
from app.jobs import lifecycle, scheduling
from app.jobs.defaults import apply_defaults
from app.jobs.memory import expected_memory
from app.jobs.schemas import Hyperparameters, JobCreate, JobRead
from app.jobs.spec_checks import check_spec
from app.jobs.stop_reasons import JobFailed
from app.jobs.tables import FINISHED, Checkpoint, JobEvent, Metric, TrainingJob
from app.pagination import PageParams, newest_first
from app.tasktypes.types import TaskType


def create_job(
    session: Session,
    send: lifecycle.Send,
    settings: Settings,
    store: ArtifactStore,
    team_id: str,
    spec: JobCreate,
    on_created: Callable[[TrainingJob], None] = lambda job: None,
) -> TrainingJob:
    """Check the spec against what exists, commit the job row, then send its id to the workers.

    `on_created(job)` runs in the job's transaction, before it commits (an idempotent request records its answer)."""
    dataset = get_dataset(session, team_id, spec.dataset_id)
    check_resources(session, settings, spec.resources.pool, spec.resources.gpus)
    task = TaskType(dataset.task)
    base = check_base_model(session, settings.models_dir, team_id, spec.base_model, task)
    hp = apply_defaults(spec.hyperparameters, task, train_rows(dataset), base.family, spec.resources.gpus)
    check_spec(hp, dataset, base, store, task, spec.hyperparameters.model_fields_set)
    hp.expected_memory = expected_memory(dataset, base, hp, settings.job_memory_budget_mb)
    job = lifecycle.submit(
        session,
        team_id=team_id,
        dataset_id=dataset.id,
        task=task,
        base_model=spec.base_model,
        hyperparameters=hp.model_dump(mode="json"),
        priority=spec.priority,
        pool=spec.resources.pool,
        gpus=spec.resources.gpus,
    )
    on_created(job)
    session.commit()
    session.refresh(job)
    session.expunge(job)  # the answer is the job as submitted (queued), as a replay answers, though a worker may
    lifecycle.dispatch(session, job.id, send)  # claim it before this request returns
    return job


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to run a job, read in one go: nothing ORM reaches the runner."""

    job_id: str
    team_id: str
    task: TaskType
    base_model: BaseModelRef
    hyperparameters: Hyperparameters
    dataset_id: str
    dataset_key: str
    dataset_name: str
    labels: list[str]
    gpus: int = 1  # devices of its worker it asked for (resources.gpus)


def read_job_spec(session: Session, settings: Settings, job_id: str) -> JobSpec:
    """The job's spec as the worker runs it; JobFailed (with what to do) if its dataset or base model is gone."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise JobFailed("the job was deleted")
    dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    if dataset is None:
        raise JobFailed("the job's dataset was deleted; upload it again and submit a new job")
    base = find_base_model(session, settings.models_dir, job.team_id, job.base_model)
    if base is None:
        raise JobFailed(f"base model '{job.base_model}' is no longer available; submit the job with another one")
    return JobSpec(
        job_id=job.id,
        team_id=job.team_id,
        task=TaskType(job.task),
        base_model=base,
        hyperparameters=Hyperparameters.model_validate(job.hyperparameters),
        dataset_id=dataset.id,
        dataset_key=dataset.storage_key,
        dataset_name=dataset.name,
        labels=list(dataset.labels),
        gpus=job.gpus,
    )


def get_job(session: Session, team_id: str, job_id: str) -> TrainingJob:
    """The team's job, or 404 (another team's answers exactly like a missing one)."""
    job = session.scalar(select(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.team_id == team_id))
    if job is None:
        raise NotFound(f"No job '{job_id}'. List yours with GET /jobs.")
    return job


def read_with_place(session: Session, settings: Settings, job: TrainingJob) -> JobRead:
    """The job as GET /jobs/{id} shows it: a queued one with its queue position and what it waits for."""
    view = JobRead.model_validate(job)
    place = scheduling.place(session, settings, job)
    if place is not None:
        where = {"queue_position": place.queue_position, "waiting_for": place.waiting_for}
        view = view.model_copy(update=where | {"waiting_detail": place.detail})
    return view


def list_jobs(
    session: Session, team_id: str, status: str | None, page: PageParams
) -> tuple[list[TrainingJob], str | None]:
    """Newest first, cursor-paged, optionally one status only."""
    query = select(TrainingJob).where(TrainingJob.team_id == team_id)
    if status:
        query = query.where(TrainingJob.status == status)
    anchor = get_job(session, team_id, page.cursor) if page.cursor else None
    return newest_first(session, query, TrainingJob, anchor, page.limit)


def list_metrics(
    session: Session, job: TrainingJob, name: str | None, after_step: int | None, page: PageParams
) -> tuple[list[Metric], str | None]:
    """Metric rows in the order written (step order), filtered by name and step, cursor-paged by row id."""
    query = select(Metric).where(Metric.job_id == job.id)
    if name:
        query = query.where(Metric.name == name)
    if after_step is not None:
        query = query.where(Metric.step > after_step)
    return _rows_after(session, query, Metric, page)


def list_checkpoints(session: Session, job: TrainingJob) -> list[Checkpoint]:
    return list(
        session.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step, Checkpoint.created_at)
        )
    )


def list_events(session: Session, job: TrainingJob, page: PageParams) -> tuple[list[JobEvent], str | None]:
    """The job's story in the order it happened, cursor-paged by row id."""
    return _rows_after(session, select(JobEvent).where(JobEvent.job_id == job.id), JobEvent, page)


def _rows_after(session: Session, query: Select, entity: type[Metric] | type[JobEvent], page: PageParams) -> tuple:
    """A page of rows in the order written (by row id), after the cursor's row."""
    after = page.row_id()
    if after is not None:
        query = query.where(entity.id > after)
    rows = list(session.scalars(query.order_by(entity.id).limit(page.limit + 1)))
    return rows[: page.limit], (str(rows[page.limit - 1].id) if len(rows) > page.limit else None)


def get_report(job: TrainingJob) -> dict:
    """The job's evaluation report on its test split (its best checkpoint's weights)."""
    if job.report is None:
        raise NotFound(f"Job '{job.id}' has no report yet (status: {job.status}); it is written when the job succeeds.")
    return job.report


def delete_job(session: Session, store: ArtifactStore, job: TrainingJob) -> None:
    """Remove a finished job: its row, metrics, events and checkpoint records, then its checkpoint files.

    The model it produced stays registered (delete it with DELETE /models/{id})."""
    if job.status not in FINISHED:
        raise Conflict(
            f"Job '{job.id}' is {job.status}; cancel it first (POST /jobs/{job.id}/cancel), then delete it once it "
            "has stopped."
        )
    session.execute(delete(Metric).where(Metric.job_id == job.id))
    session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    session.execute(delete(Checkpoint).where(Checkpoint.job_id == job.id))
    session.delete(job)
    session.flush()
    store.delete_prefix(job_key(job.id))
