"""Batch prediction runs: submit, read, cancel, delete (the API), and claim, progress, finish (the worker).

Every write after a claim is a conditional UPDATE fenced by the run's attempt, as training jobs' are
(app/jobs/lifecycle.py): a re-delivered message claims the run again with a new attempt and starts over from the
first row, and the older attempt, should it still be alive, finds its next write refused and stops. The results file
is written whole under one key at the end of an attempt, so a run that starts over replaces it, never appends."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.artifacts.layout import prediction_input_key, prediction_key, write_dataset
from app.artifacts.store import ArtifactStore
from app.config import DEFAULT_POOL, Settings
from app.datasets.ingest import ParsedDataset
from app.datasets.service import get_dataset
from app.datasets.tables import Dataset
from app.datasets.text_file import parse_text
from app.db import rows_changed, utcnow
from app.errors import Conflict, InvalidInput, NotFound
from app.input_limits import InputLimits
from app.jobs.tables import TrainingJob
from app.pagination import PageParams, newest_first
from app.predictions.schemas import PredictionCreate
from app.predictions.tables import ACTIVE, PredictionRun, PredictionStatus
from app.registry.service import resolve_model
from app.registry.tables import RegisteredModel
from app.tasktypes.types import TaskType

log = logging.getLogger(__name__)


def create_run(
    session: Session, settings: Settings, team_id: str, spec: PredictionCreate, send: Callable[[str, str], None]
) -> PredictionRun:
    """Resolve the model and dataset (the team's own, else 404), check the row cap, store the run, commit, send."""
    model = resolve_model(session, team_id, spec.model)
    dataset = get_dataset(session, team_id, spec.dataset_id)
    if model.task != dataset.task:
        raise InvalidInput(
            f"Model '{model.id}' does {model.task} but dataset '{dataset.id}' holds {dataset.task} examples; "
            "pick a model trained for that task."
        )
    rows = count_rows(dataset, spec.split)
    if rows == 0:
        raise InvalidInput(f"Dataset '{dataset.id}' has no rows in split '{spec.split}'; pick another split.")
    check_row_cap(settings, rows)
    run = PredictionRun(
        team_id=team_id,
        model_id=model.id,
        model_ref=spec.model or "production",
        dataset_id=dataset.id,
        split=spec.split,
        top_k=spec.top_k,
        rows_total=rows,
    )
    session.add(run)
    session.flush()
    run.storage_key = prediction_key(run.id)
    session.commit()
    dispatch(session, run.id, send)
    session.refresh(run)
    return run


@dataclass(frozen=True)
class Upload:
    """A file of texts to score, sent with POST /predictions (multipart)."""

    filename: str
    data: bytes
    text_column: str = "text"
    label_column: str | None = None  # a column of true labels to copy beside the predictions


def create_run_from_upload(
    session: Session,
    store: ArtifactStore,
    settings: Settings,
    team_id: str,
    model_ref: str | None,
    top_k: int,
    upload: Upload,
    send: Callable[[str, str], None],
) -> PredictionRun:
    """Parse an uploaded CSV/JSONL of texts with the datasets' parser and caps (labels optional), store it under
    the run (its bytes count in the team's storage), commit, send. Image files are scored as a dataset (upload it
    with POST /datasets, pass dataset_id)."""
    model = resolve_model(session, team_id, model_ref)
    if model.task != TaskType.text_classification:
        raise InvalidInput(
            f"Model '{model.id}' classifies images: upload the images as a dataset (POST /datasets, a zip of class "
            "folders) and send its dataset_id; an uploaded file holds texts."
        )
    limits = InputLimits.from_settings(settings)
    if len(upload.data) > limits.max_text_upload_mb * 1024 * 1024:
        raise InvalidInput(f"Text files are limited to {limits.max_text_upload_mb} MB (FINETUNE_MAX_TEXT_UPLOAD_MB).")
    records, splits_given = parse_text(upload.filename, upload.data, upload.text_column, upload.label_column, limits)
    for record in records if not splits_given else []:
        record.split = ""  # not "train": the file was never split
    if not records:
        raise InvalidInput(f"'{upload.filename}' holds no rows; send a CSV or JSONL file with a text column.")
    check_row_cap(settings, len(records))
    run = PredictionRun(
        team_id=team_id, model_id=model.id, model_ref=model_ref or "production", top_k=top_k,
        rows_total=len(records), uploaded=True,
    )  # fmt: skip
    session.add(run)
    session.flush()
    run.storage_key = prediction_key(run.id)
    parsed = ParsedDataset(TaskType.text_classification, [], records, {}, [], False)
    try:
        write_dataset(store, prediction_input_key(run.id), parsed)
        run.size_bytes = store.size(run.storage_key)
        session.commit()
    except BaseException:
        store.delete_prefix(run.storage_key)  # a failure leaves nothing behind
        raise
    dispatch(session, run.id, send)
    session.refresh(run)
    return run


def check_row_cap(settings: Settings, rows: int) -> None:
    if rows > settings.batch_predict_max_rows:
        raise InvalidInput(
            f"{rows:,} rows to score; a run takes at most {settings.batch_predict_max_rows:,} "
            "(FINETUNE_BATCH_PREDICT_MAX_ROWS); pick a split or score a smaller file."
        )


def count_rows(dataset: Dataset, split: str | None) -> int:
    """How many examples the run will score: the dataset's, or one split's."""
    if split is None:
        return dataset.num_examples
    return sum(dataset.counts.get(split, {}).values())


def pool_of_run(session: Session, run_id: str) -> str:
    """The pool whose workers score a run: where its model was trained (a fleet may have no default pool); the default
    pool for a model with no job behind it."""
    pool = session.scalar(
        select(TrainingJob.pool)
        .join(RegisteredModel, RegisteredModel.job_id == TrainingJob.id)
        .join(PredictionRun, PredictionRun.model_id == RegisteredModel.id)
        .where(PredictionRun.id == run_id)
    )
    return pool or DEFAULT_POOL


def dispatch(session: Session, run_id: str, send: Callable[[str, str], None]) -> bool:
    """Send a committed, queued run to the workers and note when; False if the broker is unreachable (the
    reaper sends it again later)."""
    try:
        send(run_id, pool_of_run(session, run_id))
    except Exception as exc:
        log.warning("could not send prediction run %s: %s", run_id, exc)
        return False
    session.execute(update(PredictionRun).where(PredictionRun.id == run_id).values(enqueued_at=utcnow()))
    session.commit()
    return True


def get_run(session: Session, team_id: str, run_id: str) -> PredictionRun:
    """The team's run, or 404 (another team's answers exactly like a missing one)."""
    run = session.scalar(select(PredictionRun).where(PredictionRun.id == run_id, PredictionRun.team_id == team_id))
    if run is None:
        raise NotFound(f"No prediction run '{run_id}'. List yours with GET /predictions.")
    return run


def list_runs(session: Session, team_id: str, page: PageParams) -> tuple[list[PredictionRun], str | None]:
    anchor = get_run(session, team_id, page.cursor) if page.cursor else None
    query = select(PredictionRun).where(PredictionRun.team_id == team_id)
    return newest_first(session, query, PredictionRun, anchor, page.limit)


def cancel_run(session: Session, run: PredictionRun) -> PredictionRun:
    """Cancel a queued or running run (its worker stops at its next batch); a finished one answers 409."""
    changed = rows_changed(
        session,
        update(PredictionRun)
        .where(PredictionRun.id == run.id, PredictionRun.status.in_(ACTIVE))
        .values(status=PredictionStatus.cancelled, finished_at=utcnow()),
    )
    session.commit()
    session.refresh(run)
    if not changed:
        raise Conflict(f"Prediction run '{run.id}' already {run.status}; only a queued or running run can cancel.")
    return run


def delete_run(session: Session, store: ArtifactStore, run: PredictionRun) -> None:
    """Remove a finished run's row, then its files (an uploaded input and the results); a queued or running one
    answers 409 (its worker could still write them)."""
    if run.status in ACTIVE:
        raise Conflict(
            f"Prediction run '{run.id}' is {run.status}; cancel it first (POST /predictions/{run.id}/cancel), then "
            "delete it."
        )
    key = run.storage_key or prediction_key(run.id)  # never "": that prefix is the whole store
    session.delete(run)
    session.flush()
    store.delete_prefix(key)


def results_key(run: PredictionRun, fmt: str) -> str:
    """The results file of a succeeded run, or 409 saying what the run is doing instead."""
    if run.status != PredictionStatus.succeeded:
        why = f": {run.error}" if run.error else ""
        raise Conflict(
            f"Prediction run '{run.id}' is {run.status}{why}; results exist once it has succeeded "
            f"(GET /predictions/{run.id} shows its progress)."
        )
    return f"{run.storage_key}/results.{fmt}"


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to score a run (nothing ORM crosses into the worker's loop)."""

    run_id: str
    attempt: int
    model_id: str
    model_storage_key: str
    dataset_storage_key: str
    split: str | None
    top_k: int
    storage_key: str


def claim(session: Session, run_id: str) -> Claimed | None:
    """A worker takes a queued run, or a running one again (its message was re-delivered after its worker died);
    None if it is finished, cancelled or gone. Commits."""
    now = utcnow()
    taken = rows_changed(
        session,
        update(PredictionRun)
        .where(PredictionRun.id == run_id, PredictionRun.status.in_(ACTIVE))
        .values(
            status=PredictionStatus.running,
            attempt=PredictionRun.attempt + 1,
            rows_done=0,
            started_at=now,
            heartbeat_at=now,
            error=None,
        ),
    )
    session.commit()
    run = session.get(PredictionRun, run_id) if taken else None
    if run is None:
        return None
    model = session.get(RegisteredModel, run.model_id) if run.model_id else None
    dataset = session.get(Dataset, run.dataset_id) if run.dataset_id else None
    if model is None or (dataset is None and not run.uploaded):
        gone = "model" if model is None else "dataset"
        fail(session, run.id, run.attempt, f"its {gone} was deleted before the run started")
        session.commit()
        return None
    rows_key = prediction_input_key(run.id) if dataset is None else dataset.storage_key
    return Claimed(run.id, run.attempt, model.id, model.storage_key, rows_key, run.split, run.top_k, run.storage_key)


def _fenced(run_id: str, attempt: int) -> tuple:
    return (
        PredictionRun.id == run_id,
        PredictionRun.attempt == attempt,
        PredictionRun.status == PredictionStatus.running,
    )


def progress(session: Session, run_id: str, attempt: int, rows_done: int) -> bool:
    """Record rows scored (and renew the lease); False if the run was cancelled or claimed again: stop."""
    values = {"rows_done": rows_done, "heartbeat_at": utcnow()}
    return bool(rows_changed(session, update(PredictionRun).where(*_fenced(run_id, attempt)).values(**values)))


def record_size(session: Session, run_id: str, size_bytes: int) -> bool:
    """Record the bytes the run now stores, whatever its status (a run cancelled while its results were copied still
    holds them); False if the run was deleted meanwhile: its files are the caller's to remove."""
    stored = update(PredictionRun).where(PredictionRun.id == run_id).values(size_bytes=size_bytes)
    return bool(rows_changed(session, stored))


def succeed(session: Session, run_id: str, attempt: int, rows_done: int) -> bool:
    values = {"status": PredictionStatus.succeeded, "rows_done": rows_done, "finished_at": utcnow()}
    return bool(rows_changed(session, update(PredictionRun).where(*_fenced(run_id, attempt)).values(**values)))


def fail(session: Session, run_id: str, attempt: int, error: str) -> bool:
    values = {"status": PredictionStatus.failed, "error": error, "finished_at": utcnow()}
    return bool(rows_changed(session, update(PredictionRun).where(*_fenced(run_id, attempt)).values(**values)))


def reap(session: Session, settings: Settings, send: Callable[[str, str], None]) -> list[str]:
    """Re-send runs whose worker stopped renewing its lease, and queued runs whose message may have been lost; the
    claim of the re-sent message starts the run over (see the module docstring). The ids sent."""
    now = utcnow()
    lost = PredictionRun.status == PredictionStatus.running
    lost &= PredictionRun.heartbeat_at < now - timedelta(seconds=settings.lease_seconds)
    resend_before = now - timedelta(seconds=settings.requeue_after_seconds)
    waiting = PredictionRun.status == PredictionStatus.queued
    waiting &= PredictionRun.enqueued_at.is_(None) | (PredictionRun.enqueued_at < resend_before)
    given_up = rows_changed(
        session,
        update(PredictionRun)
        .where(lost, PredictionRun.attempt > settings.max_restarts)
        .values(
            status=PredictionStatus.failed,
            finished_at=now,
            error=f"its worker was lost {settings.max_restarts + 1} times (out of memory?); score a smaller split",
        ),
    )
    if given_up:
        session.commit()
    sent = []
    for run_id in session.scalars(select(PredictionRun.id).where(lost | waiting)).all():
        # Pushing the lease forward first keeps reapers on other workers from sending it too.
        pushed = rows_changed(
            session,
            update(PredictionRun)
            .where(PredictionRun.id == run_id, (lost | waiting))
            .values(heartbeat_at=now, enqueued_at=now),
        )
        session.commit()
        if pushed and dispatch(session, run_id, send):
            sent.append(run_id)
    return sent
