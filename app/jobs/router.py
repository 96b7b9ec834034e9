"""HTTP for jobs: submit, watch, cancel, and read what the run produced."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.deps import CeleryDep, CurrentTeam, SessionDep, SettingsDep, StoreDep
from app.jobs import service
from app.jobs.models import JobStatus, TrainingJob
from app.jobs.schemas import CheckpointRead, EventRead, JobCreate, JobRead, MetricRead
from app.pagination import Page

router = APIRouter(prefix="/jobs", tags=["jobs"])


def valid_job(job_id: str, team: CurrentTeam, session: SessionDep) -> TrainingJob:
    return service.get_job(session, team.id, job_id)


ValidJob = Annotated[TrainingJob, Depends(valid_job)]


@router.post("", status_code=201, response_model=JobRead)
def submit_job(
    spec: JobCreate, team: CurrentTeam, session: SessionDep, store: StoreDep, celery: CeleryDep, settings: SettingsDep
) -> TrainingJob:
    return service.create_job(session, store, celery, settings, team.id, spec)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    team: CurrentTeam,
    session: SessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> Page:
    items, next_cursor = service.list_jobs(session, team.id, status, limit, cursor)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead)
def read_job(job: ValidJob) -> TrainingJob:
    return job


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job: ValidJob, session: SessionDep) -> TrainingJob:
    return service.cancel_job(session, job)


@router.get("/{job_id}/metrics", response_model=Page[MetricRead])
def read_metrics(
    job: ValidJob,
    session: SessionDep,
    name: str | None = None,
    after_step: Annotated[int | None, Query(ge=-1)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> Page:
    items, next_cursor = service.list_metrics(session, job, name, after_step, limit, cursor)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointRead])
def read_checkpoints(job: ValidJob, session: SessionDep) -> list:
    return service.list_checkpoints(session, job)


@router.get("/{job_id}/events", response_model=Page[EventRead])
def read_events(
    job: ValidJob,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> Page:
    items, next_cursor = service.list_events(session, job, limit, cursor)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{job_id}/report")
def read_report(job: ValidJob) -> dict[str, Any]:
    return service.get_report(job)
