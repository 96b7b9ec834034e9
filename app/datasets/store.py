"""How a validated dataset is laid out in the artifact store, and read back by workers."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

from app.datasets.ingest import ParsedDataset
from app.storage import ArtifactStore


def dataset_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}"


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
        store.put_bytes(f"{key}/images.zip", images.getvalue())
    store.put_bytes(f"{key}/records.jsonl", ("\n".join(lines) + "\n").encode())


def read_dataset(store: ArtifactStore, key: str) -> list[dict[str, Any]]:
    """Every record, images as bytes under "image"."""
    records = [json.loads(line) for line in store.get_bytes(f"{key}/records.jsonl").decode().splitlines() if line]
    if any("image" in r for r in records):
        with zipfile.ZipFile(io.BytesIO(store.get_bytes(f"{key}/images.zip"))) as zf:
            for r in records:
                r["image"] = zf.read(r["image"])
    return records
