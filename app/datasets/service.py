"""Dataset rules: parse and validate at upload, store, list, delete; every query scoped to a team."""

from __future__ import annotations

from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.layout import dataset_key, write_dataset
from app.artifacts.store import ArtifactStore
from app.datasets.ingest import ParsedDataset, parse_upload
from app.datasets.tables import Dataset
from app.errors import Conflict, InvalidUpload, NotFound
from app.input_limits import InputLimits
from app.jobs.tables import JobStatus, TrainingJob
from app.pagination import PageParams, newest_first
from app.tasktypes.types import TaskType


def create_dataset(
    session: Session,
    store: ArtifactStore,
    team_id: str,
    *,
    task: TaskType,
    filename: str,
    upload: BinaryIO,
    size: int,
    name: str | None,
    text_column: str,
    label_column: str,
    limits: InputLimits,
) -> Dataset:
    """Validate the whole upload (an open file) against `limits`, then store files and row; a failure leaves nothing
    behind. Images are checked and copied one at a time, never all in memory."""
    if size == 0:
        raise InvalidUpload(f"'{filename}' is empty; upload a zip of class folders or a CSV/JSONL file")
    parsed = parse_upload(task, filename, upload, text_column=text_column, label_column=label_column, limits=limits)
    try:
        return _store(session, store, team_id, parsed, filename, name, size)
    finally:
        parsed.close()


def _store(
    session: Session,
    store: ArtifactStore,
    team_id: str,
    parsed: ParsedDataset,
    filename: str,
    name: str | None,
    size: int,
) -> Dataset:
    dataset = Dataset(
        team_id=team_id,
        name=name or filename,
        task=parsed.task.value,
        filename=filename,
        labels=parsed.labels,
        counts=parsed.counts,
        warnings=parsed.warnings,
        num_examples=len(parsed.records),
        size_bytes=size,
        splits_given=parsed.splits_given,
        storage_key="",
    )
    session.add(dataset)
    session.flush()
    dataset.storage_key = dataset_key(dataset.id)
    try:
        write_dataset(store, dataset.storage_key, parsed)
        session.flush()
    except BaseException:
        store.delete_prefix(dataset.storage_key)
        raise
    return dataset


def get_dataset(session: Session, team_id: str, dataset_id: str) -> Dataset:
    """The team's dataset, or 404 (another team's answers exactly like a missing one)."""
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.team_id == team_id))
    if dataset is None:
        raise NotFound(f"No dataset '{dataset_id}'. List yours with GET /datasets.")
    return dataset


def train_rows(dataset: Dataset) -> int:
    """How many examples the dataset's training split holds."""
    return sum(dataset.counts.get("train", {}).values())


def list_datasets(session: Session, team_id: str, page: PageParams) -> tuple[list[Dataset], str | None]:
    """Newest first, cursor-paged."""
    anchor = get_dataset(session, team_id, page.cursor) if page.cursor else None
    return newest_first(session, select(Dataset).where(Dataset.team_id == team_id), Dataset, anchor, page.limit)


def delete_dataset(session: Session, store: ArtifactStore, dataset: Dataset) -> None:
    """Remove the row, then its files (jobs keep their results; their dataset_id becomes null)."""
    active = session.scalar(
        select(TrainingJob.id).where(
            TrainingJob.dataset_id == dataset.id, TrainingJob.status.in_([JobStatus.queued, JobStatus.running])
        )
    )
    if active:
        raise Conflict(f"Job '{active}' is training on this dataset; cancel it (POST /jobs/{active}/cancel) first.")
    key = dataset.storage_key
    session.delete(dataset)
    session.flush()
    store.delete_prefix(key)
