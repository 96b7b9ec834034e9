"""HTTP for datasets: parse the request, call the service, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile

from app.datasets import service
from app.datasets.schemas import DatasetRead
from app.datasets.tables import Dataset
from app.deps import CurrentTeam, SessionDep, SettingsDep, StoreDep
from app.errors import PayloadTooLarge
from app.input_limits import InputLimits
from app.pagination import Page, Paging
from app.tasktypes.types import TaskType

router = APIRouter(prefix="/datasets", tags=["datasets"])


def valid_dataset(dataset_id: str, team: CurrentTeam, session: SessionDep) -> Dataset:
    return service.get_dataset(session, team.id, dataset_id)


ValidDataset = Annotated[Dataset, Depends(valid_dataset)]


@router.post("", status_code=201, response_model=DatasetRead)
def upload_dataset(
    team: CurrentTeam,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a zip of class folders, or a CSV/JSONL file")],
    task: Annotated[TaskType, Form()],
    name: Annotated[str | None, Form(max_length=200)] = None,
    text_column: Annotated[str, Form(min_length=1)] = "text",
    label_column: Annotated[str, Form(min_length=1)] = "label",
) -> Dataset:
    limit = settings.max_upload_mb * 1024 * 1024
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"Uploads are limited to {settings.max_upload_mb} MB (FINETUNE_MAX_UPLOAD_MB).")
    return service.create_dataset(
        session,
        store,
        team.id,
        task=task,
        filename=file.filename or "upload",
        data=data,
        name=name,
        text_column=text_column,
        label_column=label_column,
        limits=InputLimits.from_settings(settings),
    )


@router.get("", response_model=Page[DatasetRead])
def list_datasets(
    team: CurrentTeam,
    session: SessionDep,
    page: Paging,
) -> Page:
    items, next_cursor = service.list_datasets(session, team.id, page)
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetRead)
def read_dataset(dataset: ValidDataset) -> Dataset:
    return dataset


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset: ValidDataset, session: SessionDep, store: StoreDep) -> None:
    service.delete_dataset(session, store, dataset)
