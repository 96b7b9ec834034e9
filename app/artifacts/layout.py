"""Where things live in the artifact store: the one place that turns ids into keys, and the dataset files.

datasets/<dataset_id>/records.jsonl        split, label, text or image entry name (one JSON object a line)
datasets/<dataset_id>/images.zip           image datasets: the images, stored uncompressed
jobs/<job_id>/checkpoints/step-<NNNNNNNN>/ one folder per checkpoint (see worker/training/checkpoint.py)
models/<model_id>/                         a fine-tuned model in Hugging Face format plus finetune.json
models/<model_id>/runtimes/<runtime>/      the model converted for a faster runtime (model.onnx, runtime.json)
predictions/<run_id>/results.{csv,jsonl}   a batch prediction run's results (see worker/predictions.py)
predictions/<run_id>/input/records.jsonl   the texts of a run that scores an uploaded file, stored as a dataset's
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from app.artifacts.store import ArtifactStore
from app.datasets.ingest import ParsedDataset, Record
from app.tasktypes.types import TaskType

RECORDS = "records.jsonl"
IMAGES = "images.zip"


def dataset_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


def job_key(job_id: str) -> str:
    """Everything a job's runs leave in the store (its checkpoints)."""
    return f"jobs/{job_id}"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"{job_key(job_id)}/checkpoints/{checkpoint_name(step)}"


def model_key(model_id: str) -> str:
    return f"models/{model_id}"


def runtime_key(model_id: str, runtime: str) -> str:
    """A model's files for a serving runtime other than torch (app/inference/conversion.py)."""
    return f"{model_key(model_id)}/runtimes/{runtime}"


def prediction_key(run_id: str) -> str:
    return f"predictions/{run_id}"


def prediction_input_key(run_id: str) -> str:
    """An uploaded file to score, in a dataset's layout (records.jsonl), so the worker reads both alike."""
    return f"{prediction_key(run_id)}/input"


def write_dataset(store: ArtifactStore, key: str, parsed: ParsedDataset) -> None:
    """records.jsonl (split, label, text or image name) and, for images, one uncompressed images.zip, built in a
    temporary file one image at a time (an upload of any size is stored in bounded memory)."""
    lines = []
    has_images = parsed.task == TaskType.image_classification
    with tempfile.TemporaryDirectory(prefix="dataset-") as tmp:
        images = Path(tmp) / IMAGES
        with zipfile.ZipFile(images, "w", compression=zipfile.ZIP_STORED) as zf:
            for i, record in enumerate(parsed.records):
                row: dict[str, Any] = {"split": record.split, "label": record.label}
                if has_images:
                    row["image"] = f"{i:07d}"
                    _copy_image(parsed, record, zf, row["image"])
                else:
                    row["text"] = record.text
                lines.append(json.dumps(row, ensure_ascii=False))
        if has_images:
            store.put_file(images, f"{key}/{IMAGES}")
    store.put_bytes(f"{key}/{RECORDS}", ("\n".join(lines) + "\n").encode())


def _copy_image(parsed: ParsedDataset, record: Record, zf: zipfile.ZipFile, name: str) -> None:
    if record.member is None or parsed.archive is None:
        zf.writestr(name, parsed.image_bytes(record))
        return
    with parsed.archive.open(record.member) as src, zf.open(name, "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def read_dataset(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    """Every record, images as bytes under "image" (and their entry names in images.zip under "image_entry")."""
    records = [json.loads(line) for line in store.get_bytes(f"{key}/{RECORDS}").decode().splitlines() if line]
    if any("image" in r for r in records):
        with zipfile.ZipFile(io.BytesIO(store.get_bytes(f"{key}/{IMAGES}"))) as zf:
            for r in records:
                r["image_entry"] = r["image"]
                r["image"] = zf.read(r["image"])
    return records


def record_batches(
    store: ArtifactStore, dataset_key: str, split: str | None, size: int
) -> Iterator[list[dict[str, Any]]]:
    """The dataset's rows (of `split`, or all) in stored order, `size` at a time, each with its row number; image
    rows carry their bytes under "image" and their entry name under "image_entry", read one batch at a time."""
    # split("\n"), not splitlines(): a text may hold U+2028 and friends, which JSON leaves unescaped.
    lines = store.get_bytes(f"{dataset_key}/{RECORDS}").decode().split("\n")
    rows = (dict(json.loads(line), row=n) for n, line in enumerate(line for line in lines if line))
    with ExitStack() as stack:
        archive: zipfile.ZipFile | None = None
        batch: list[dict[str, Any]] = []
        for row in rows:
            if split is not None and row["split"] != split:
                continue
            if "image" in row:
                if archive is None:
                    raw = stack.enter_context(store.fs.open(store.path(f"{dataset_key}/{IMAGES}"), "rb"))
                    archive = stack.enter_context(zipfile.ZipFile(raw))
                row["image_entry"] = row["image"]
                row["image"] = archive.read(row["image"])
            batch.append(row)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch
