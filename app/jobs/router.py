"""HTTP for jobs: submit, watch, cancel, and read what the run produced."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from starlette.responses import StreamingResponse

from app.deps import NEEDS_TRAIN, CurrentTeam, ResourceId, SendJob, SendReport, SessionDep, SettingsDep, StoreDep
from app.idempotency.http import IDEMPOTENT_RESPONSES, IdempotencyKey, Remember, replayed
from app.idempotency.service import fingerprint, run_once
from app.jobs import checkpoint_reports, lifecycle, service
from app.jobs.schemas import CheckpointRead, EventRead, JobCreate, JobRead, MetricRead
from app.jobs.stream import CURSOR_PATTERN, Cursor, StreamHub, event_stream
from app.jobs.tables import JobStatus, TrainingJob
from app.pagination import ROW_CURSOR, Page, PageParams, Paging, paging
from app.quotas.service import check_can_submit

router = APIRouter(prefix="/jobs", tags=["jobs"])


def valid_job(job_id: ResourceId, team: CurrentTeam, session: SessionDep) -> TrainingJob:
    return service.get_job(session, team.id, job_id)


ValidJob = Annotated[TrainingJob, Depends(valid_job)]
LastEventIdHeader = Annotated[
    str | None,
    Header(alias="Last-Event-ID", pattern=CURSOR_PATTERN, description="resume after this id (a reconnecting client)"),
]
LastEventIdQuery = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, max_length=40, description="the same as the Last-Event-ID header (the header wins)"),
]
CheckpointRef = Annotated[
    str | None,
    Query(min_length=1, max_length=64, description="a checkpoint's id or step (GET /jobs/{id}/checkpoints)"),
]
MetricPaging = Annotated[PageParams, paging(1000, 10000, ROW_CURSOR)]
EventPaging = Annotated[PageParams, paging(100, 1000, ROW_CURSOR)]


@router.post("", status_code=201, response_model=JobRead, responses=IDEMPOTENT_RESPONSES, dependencies=[NEEDS_TRAIN])
def submit_job(
    spec: JobCreate,
    team: CurrentTeam,
    session: SessionDep,
    send: SendJob,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Queue a fine-tuning job. Send an `Idempotency-Key` header to make retries safe: the same key and spec
    answer with the first job, never a second one."""

    def create(remember: Remember) -> TrainingJob:
        check_can_submit(session, settings, team)  # a replay is answered even at the limit

        def on_created(job: TrainingJob) -> None:
            remember(201, JobRead.model_validate(job).model_dump(mode="json"))

        return service.create_job(session, send, settings, store, team.id, spec, on_created)

    print_ = fingerprint(spec.model_dump(mode="json"))
    return replayed(run_once(session, team.id, "POST /jobs", idempotency_key, print_, create))


@router.get("", response_model=Page[JobRead])
def list_jobs(team: CurrentTeam, session: SessionDep, page: Paging, status: JobStatus | None = None) -> Page:
    items, next_cursor = service.list_jobs(session, team.id, status, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobRead)
def read_job(job: ValidJob, session: SessionDep, settings: SettingsDep) -> JobRead:
    """The job; a queued one also says its place in its pool's queue and what it waits for."""
    return service.read_with_place(session, settings, job)


@router.delete("/{job_id}", status_code=204, dependencies=[NEEDS_TRAIN])
def delete_job(job: ValidJob, session: SessionDep, store: StoreDep) -> None:
    """Delete a finished job with its metrics, events and checkpoints (its model stays; see DELETE /models/{id})."""
    service.delete_job(session, store, job)


@router.post("/{job_id}/cancel", response_model=JobRead, dependencies=[NEEDS_TRAIN])
def cancel_job(job: ValidJob, session: SessionDep) -> TrainingJob:
    return lifecycle.request_cancel(session, job)


@router.get("/{job_id}/metrics", response_model=Page[MetricRead])
def read_metrics(
    job: ValidJob,
    session: SessionDep,
    page: MetricPaging,
    name: Annotated[str | None, Query(max_length=40)] = None,
    after_step: Annotated[int | None, Query(ge=-1, le=2**62)] = None,
) -> Page:
    items, next_cursor = service.list_metrics(session, job, name, after_step, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{job_id}/checkpoints", response_model=list[CheckpointRead])
def read_checkpoints(job: ValidJob, session: SessionDep) -> list:
    return service.list_checkpoints(session, job)


@router.get("/{job_id}/events", response_model=Page[EventRead])
def read_events(job: ValidJob, session: SessionDep, page: EventPaging) -> Page:
    items, next_cursor = service.list_events(session, job, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get(
    "/{job_id}/report",
    responses={202: {"description": "the checkpoint's report is being computed: poll the same URL"}},
)
def read_report(
    job: ValidJob,
    session: SessionDep,
    send: SendReport,
    response: Response,
    checkpoint: CheckpointRef = None,
) -> dict[str, Any]:
    """The evaluation on the test split: per-class scores, confusion matrix, calibration, the most-confused pairs, the
    most confident mistakes, precision/recall by threshold (two classes). With `checkpoint`, that checkpoint's:
    a worker computes it on the first request (202 with where to poll), then 200."""
    if checkpoint is None:
        return service.get_report(job)
    status, body = checkpoint_reports.checkpoint_report(session, job, checkpoint, send)
    if status == 202:
        response.status_code = 202
        response.headers["Location"] = body["poll"]
        response.headers["Retry-After"] = str(checkpoint_reports.POLL_AFTER_S)
    return body


@router.get(
    "/{job_id}/stream",
    response_class=StreamingResponse,
    responses={200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}},
)
async def stream_job(
    job: ValidJob,
    request: Request,
    last_event_id_header: LastEventIdHeader = None,
    last_event_id: LastEventIdQuery = None,
) -> StreamingResponse:
    """The job live, as Server-Sent Events: `status` (the job, first and on every change), `metric` and `event` rows
    as they are written (id `<metric_id>-<event_id>`), a `: heartbeat` comment when quiet, `end` when it finishes.
    Reconnect with `Last-Event-ID` to get exactly what was missed. See app/jobs/stream.py."""
    hub: StreamHub = request.app.state.stream_hub
    cursor = Cursor.parse(last_event_id_header or last_event_id)
    sub = hub.subscribe(job.team_id, JobRead.model_validate(job).model_dump(mode="json"), cursor)
    return event_stream(hub, sub)
