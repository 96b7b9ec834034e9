"""A few examples per class of a stored dataset, for people to look at (the console's dataset page).

Bounded whatever the dataset's size: records.jsonl is read line by line and only until every class has its
examples, texts are clipped, and images are read one zip entry at a time and shrunk to small thumbnails."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import Any

from app.artifacts.layout import IMAGES, RECORDS
from app.artifacts.store import ArtifactStore
from app.datasets.tables import Dataset
from app.image_files import ImageRefused, load_image
from app.input_limits import InputLimits

MAX_PER_CLASS = 10
TEXT_CHARS = 300  # a sample text is clipped to this many characters
THUMBNAIL_PX = 96  # the longer side of an image sample
IMAGE_PX = 512  # the longer side of one image served alone (GET /datasets/{id}/images/{entry})
ENTRY_PATTERN = r"^[0-9]{1,12}$"  # how app/artifacts/layout.py names the images in images.zip
MAX_LINES = 200_000  # stop looking after this many records even if a class is still short (it cannot be: every
# class has at least one record, but a bound keeps a corrupted file from costing more)


def dataset_samples(store: ArtifactStore, dataset: Dataset, per_class: int, limits: InputLimits) -> dict[str, Any]:
    """{"task", "per_class", "samples": {label: [{"split", "text"} or {"split", "image": data URL}]}}."""
    picked = _pick_records(store, dataset, per_class)
    if dataset.task == "image_classification":
        _attach_thumbnails(store, dataset, picked, limits)
    else:
        for rows in picked.values():
            for row in rows:
                text = row.get("text") or ""
                row["text"] = text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
    return {"task": dataset.task, "per_class": per_class, "samples": picked}


def _pick_records(store: ArtifactStore, dataset: Dataset, per_class: int) -> dict[str, list[dict[str, Any]]]:
    """The first `per_class` records of each label, in file order, reading no further than needed."""
    picked: dict[str, list[dict[str, Any]]] = {label: [] for label in dataset.labels}
    wanted = len(picked) * per_class
    found = 0
    with store.fs.open(store.path(f"{dataset.storage_key}/{RECORDS}"), "rb") as f:
        for n, line in enumerate(f):
            if found >= wanted or n >= MAX_LINES:
                break
            if not line.strip():
                continue
            record = json.loads(line)
            rows = picked.setdefault(record["label"], [])
            if len(rows) < per_class:
                rows.append({k: record[k] for k in ("split", "text", "image") if k in record})
                found += 1
    return picked


def _attach_thumbnails(
    store: ArtifactStore, dataset: Dataset, picked: dict[str, list[dict[str, Any]]], limits: InputLimits
) -> None:
    """Replace each record's entry name by a small PNG data URL (or drop the image it cannot show)."""
    with (
        store.fs.open(store.path(f"{dataset.storage_key}/{IMAGES}"), "rb") as f,
        zipfile.ZipFile(f) as zf,
    ):
        for rows in picked.values():
            for row in rows:
                row["image"] = _thumbnail(zf, row.pop("image", ""), limits)


def dataset_image(store: ArtifactStore, dataset: Dataset, entry: str, limits: InputLimits) -> bytes | None:
    """One image of an image dataset (a report's misclassified example) as a PNG at most IMAGE_PX on its longer
    side; None if the dataset holds no such image."""
    if dataset.task != "image_classification":
        return None
    with (
        store.fs.open(store.path(f"{dataset.storage_key}/{IMAGES}"), "rb") as f,
        zipfile.ZipFile(f) as zf,
    ):
        return _png(zf, entry, limits, IMAGE_PX)


def _thumbnail(zf: zipfile.ZipFile, entry: str, limits: InputLimits) -> str | None:
    png = _png(zf, entry, limits, THUMBNAIL_PX)
    return "data:image/png;base64," + base64.b64encode(png).decode() if png is not None else None


def _png(zf: zipfile.ZipFile, entry: str, limits: InputLimits, side: int) -> bytes | None:
    """The entry decoded and re-encoded as an RGB PNG within side x side pixels; None if absent or unreadable."""
    try:
        info = zf.getinfo(entry)
    except KeyError:
        return None
    if info.file_size > limits.max_image_mb * 1024 * 1024:
        return None
    try:
        img = load_image(zf.read(info), max_pixels=limits.max_image_pixels)
    except ImageRefused:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()
