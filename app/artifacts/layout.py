"""Where things live in the artifact store: the one place that turns ids into keys, and the dataset files.

datasets/<dataset_id>/records.jsonl        split, label, text or image entry name (one JSON object a line)
datasets/<dataset_id>/images.zip           image datasets: the images, stored uncompressed
jobs/<job_id>/checkpoints/step-<NNNNNNNN>/ one folder per checkpoint (see worker/training/checkpoint.py)
models/<model_id>/                         a fine-tuned model in Hugging Face format plus finetune.json
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from app.artifacts.store import ArtifactStore
from app.datasets.ingest import ParsedDataset

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


def write_dataset(store: ArtifactStore, key: str, parsed: ParsedDataset) -> None:
    """records.jsonl (split, label, text or image name) and, for images, one uncompressed images.zip."""
    lines = []
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, record in enumerate(parsed.records):
            row: dict[str, Any] = {"split": record.split, "label": record.label}
            if record.image is not None:
                row["image"] = f"{i:07d}"
                zf.writestr(row["image"], record.image)
            else:
                row["text"] = record.text
            lines.append(json.dumps(row, ensure_ascii=False))
    if any(r.image is not None for r in parsed.records):
        store.put_bytes(f"{key}/{IMAGES}", images.getvalue())
    store.put_bytes(f"{key}/{RECORDS}", ("\n".join(lines) + "\n").encode())


def read_dataset(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    """Every record, images as bytes under "image"."""
    records = [json.loads(line) for line in store.get_bytes(f"{key}/{RECORDS}").decode().splitlines() if line]
    if any("image" in r for r in records):
        with zipfile.ZipFile(io.BytesIO(store.get_bytes(f"{key}/{IMAGES}"))) as zf:
            for r in records:
                r["image"] = zf.read(r["image"])
    return records
