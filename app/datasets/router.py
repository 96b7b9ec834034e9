"""HTTP for datasets: parse the request, call the service, return."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam

from app.datasets import service
from app.datasets.samples import ENTRY_PATTERN, MAX_PER_CLASS, dataset_image, dataset_samples
from app.datasets.schemas import DatasetRead
from app.datasets.tables import Dataset
from app.deps import NEEDS_TRAIN, CurrentTeam, ResourceId, SessionDep, SettingsDep, StoreDep
from app.errors import NotFound, PayloadTooLarge
from app.idempotency.http import IDEMPOTENT_RESPONSES, IdempotencyKey, Remember, replayed
from app.idempotency.service import file_digest, fingerprint, run_once
from app.input_limits import InputLimits
from app.pagination import Page, Paging
from app.quotas.service import check_can_store
from app.tasktypes.types import TaskType

router = APIRouter(prefix="/datasets", tags=["datasets"])


def valid_dataset(dataset_id: ResourceId, team: CurrentTeam, session: SessionDep) -> Dataset:
    return service.get_dataset(session, team.id, dataset_id)


ValidDataset = Annotated[Dataset, Depends(valid_dataset)]


@router.post(
    "", status_code=201, response_model=DatasetRead, responses=IDEMPOTENT_RESPONSES, dependencies=[NEEDS_TRAIN]
)
def upload_dataset(
    team: CurrentTeam,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a zip of class folders, or a CSV/JSONL file")],
    task: Annotated[TaskType, Form()],
    name: Annotated[str | None, Form(max_length=200)] = None,
    text_column: Annotated[str, Form(min_length=1, max_length=200)] = "text",
    label_column: Annotated[str, Form(min_length=1, max_length=200)] = "label",
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Upload a dataset. Send an `Idempotency-Key` header to make retries safe (the same key and file answer with
    the first dataset)."""
    upload = file.file  # spooled to disk past 1 MB by the form parser: never read whole into memory
    size = upload.seek(0, os.SEEK_END)
    upload.seek(0)
    if size > settings.max_upload_mb * 1024 * 1024:
        raise PayloadTooLarge(f"Uploads are limited to {settings.max_upload_mb} MB (FINETUNE_MAX_UPLOAD_MB).")
    filename = (file.filename or "upload")[-200:]  # its end holds the extension; the name column takes 200

    def create(remember: Remember) -> Dataset:
        check_can_store(session, settings, team, size)
        dataset = service.create_dataset(
            session, store, team.id, task=task, filename=filename, upload=upload, size=size, name=name,
            text_column=text_column, label_column=label_column, limits=InputLimits.from_settings(settings),
        )  # fmt: skip
        remember(201, DatasetRead.model_validate(dataset).model_dump(mode="json"))
        return dataset

    print_ = fingerprint(file_digest(upload), task.value, filename, name, text_column, label_column)
    return replayed(run_once(session, team.id, "POST /datasets", idempotency_key, print_, create))


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


@router.get("/{dataset_id}/samples")
def read_samples(
    dataset: ValidDataset,
    store: StoreDep,
    settings: SettingsDep,
    per_class: Annotated[int, Query(ge=1, le=MAX_PER_CLASS, description="examples per class")] = 3,
) -> dict[str, Any]:
    """A few examples of each class: texts (clipped to 300 characters) or images as 96-pixel PNG data URLs."""
    return dataset_samples(store, dataset, per_class, InputLimits.from_settings(settings))


@router.get(
    "/{dataset_id}/images/{entry}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the image, as a PNG of at most 512 pixels a side"}},
)
def read_image(
    dataset: ValidDataset,
    store: StoreDep,
    settings: SettingsDep,
    entry: Annotated[str, PathParam(pattern=ENTRY_PATTERN, description="an image's name in the dataset")],
) -> Response:
    """One image of the dataset, as a report's misclassified examples reference it (`image_url`)."""
    png = dataset_image(store, dataset, entry, InputLimits.from_settings(settings))
    if png is None:
        raise NotFound(f"Dataset '{dataset.id}' has no image '{entry}'; the report's image_url names those it has.")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/{dataset_id}", status_code=204, dependencies=[NEEDS_TRAIN])
def delete_dataset(dataset: ValidDataset, session: SessionDep, store: StoreDep) -> None:
    service.delete_dataset(session, store, dataset)
