"""Converting a registered model for a faster runtime, once: export it (onnx) or check it quantizes (int8), store the
files next to the model, and score the converted model on its dataset's test split beside the torch model, both
through the serving path, so the accuracy a runtime costs is measured, not assumed.

It runs in the API process when an alias first asks for the runtime (`PUT /aliases/{name}`), before the alias moves:
a model that cannot be converted is a 422 and the alias keeps its runtime. One conversion at a time per process (an
export takes the cores for seconds), and at most MAX_TEST_ROWS test rows scored, so the request stays bounded. What
it measured is kept on the model (`runtimes` in GET /models/{id}); a model is converted again only if that record
is missing or was made by an older recipe (RECIPES)."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from app.artifacts.layout import dataset_key, record_batches, runtime_key
from app.artifacts.store import ArtifactStore
from app.datasets.tables import Dataset
from app.db import utcnow
from app.errors import AppError, InvalidInput
from app.inference.cache import LoadedModel, load_served_model
from app.inference.runtimes import (
    INT8,
    INT8_ONNX_FILE,
    ONNX,
    ONNX_FILE,
    TORCH,
    check_supported,
    export_onnx,
    onnx_runtime_available,
    quantize_onnx_int8,
    require_packages,
)
from app.jobs.tables import TrainingJob
from app.registry.tables import RegisteredModel

log = logging.getLogger(__name__)
RUNTIME_FILE = "runtime.json"
MAX_TEST_ROWS = 5000
# Raised when a runtime's conversion changes, so that models converted before are converted (and scored) again.
RECIPES: dict[str, int] = {ONNX: 2, INT8: 5}
EVAL_BATCH = 64
_converting = threading.Lock()


def ensure_converted(
    session: Session, store: ArtifactStore, model: RegisteredModel, runtime: str, threads: int
) -> dict[str, Any] | None:
    """The model's record for `runtime`, converting it first if it has none (blocking; see the module docstring).
    Nothing to do for torch. Raises a 422 when the runtime's packages are missing or the model cannot be converted."""
    if runtime == TORCH:
        return None
    require_packages(runtime, exporting=True)
    done = (model.runtimes or {}).get(runtime)
    if done and done.get("recipe") == RECIPES[runtime]:
        return done
    # End the read transaction (nothing is written before the alias moves): no connection is held while it converts.
    session.commit()
    with _converting:
        started = time.monotonic()
        try:
            record = _convert(session, store, model, runtime, threads)
        except AppError:
            raise
        except Exception as exc:
            log.warning("model %s could not be converted to %s", model.id, runtime, exc_info=True)
            raise InvalidInput(
                f"model '{model.id}' could not be converted to runtime '{runtime}' ({exc.__class__.__name__}: "
                f"{str(exc)[:300]}); the alias was not moved and keeps its runtime. Serve this model with runtime "
                "'torch'.",
                title="Conversion failed",
                extra={"field": "runtime"},
            ) from exc
        record["seconds"] = round(time.monotonic() - started, 2)
    model.runtimes = {**(model.runtimes or {}), runtime: record}  # a new dict: the JSON column sees the change
    session.flush()
    log.info("model %s converted to %s: %s", model.id, runtime, record)
    return record


def _convert(
    session: Session, store: ArtifactStore, model: RegisteredModel, runtime: str, threads: int
) -> dict[str, Any]:
    folder = store.local_dir(model.storage_key)
    reference = load_served_model(model.id, folder)
    assert reference.model is not None
    check_supported(runtime, reference.model, model.id)
    with tempfile.TemporaryDirectory(prefix="runtime-") as tmp:
        files = Path(tmp)
        manifest: dict[str, Any] = {"runtime": runtime, "torch": torch.__version__}
        if runtime == ONNX:
            manifest.update(export_onnx(reference.model, reference.prep, _sample_batch(reference), files / ONNX_FILE))
            manifest.update(engine="onnxruntime", file=ONNX_FILE, opset=_opset(files / ONNX_FILE))
        elif runtime == INT8 and onnx_runtime_available():
            manifest.update(export_onnx(reference.model, reference.prep, _sample_batch(reference), files / ONNX_FILE))
            manifest.update(engine="onnxruntime", file=INT8_ONNX_FILE, opset=_opset(files / ONNX_FILE))
            manifest.update(quantize_onnx_int8(files / ONNX_FILE, files / INT8_ONNX_FILE))
            (files / ONNX_FILE).unlink()  # the fp32 graph is onnx's business, not int8's
        elif runtime == INT8:
            # dynamic quantization is deterministic from the fp32 weights: redone at each load, nothing to keep
            manifest.update(
                engine="torch.ao",
                quantization="torch.ao dynamic, per channel",
                dtype="qint8",
                modules="widening Linear",
            )
        (files / RUNTIME_FILE).write_text(json.dumps(manifest, indent=2))
        converted = load_served_model(model.id, folder, runtime, files, threads)
        record: dict[str, Any] = {
            "recipe": RECIPES[runtime],
            "engine": manifest["engine"],
            "converted_at": utcnow().isoformat(),
            "size_bytes": sum(p.stat().st_size for p in files.iterdir()),
            **_accuracies(session, store, model, reference, converted),
        }
        store.put_dir(files, runtime_key(model.id, runtime))
    return record


def _sample_batch(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """A collated batch of two dummy inputs to trace the export with (its sizes become dynamic axes)."""
    if loaded.reads_text:
        return loaded.collate(["trace the model", "trace the model with a longer text than the first"])
    size = loaded.prep.image_size or 224
    return loaded.collate(torch.zeros(2, 3, size, size, dtype=torch.uint8))


def _opset(path: Path) -> int | None:
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)


def _accuracies(
    session: Session, store: ArtifactStore, model: RegisteredModel, reference: LoadedModel, converted: LoadedModel
) -> dict[str, Any]:
    """Test accuracy of the converted model and of the torch model on the same rows of the model's dataset, and the
    share of rows where their top labels agree; nulls and a note when the dataset is gone."""
    job = session.get(TrainingJob, model.job_id) if model.job_id else None
    dataset = session.get(Dataset, job.dataset_id) if job is not None and job.dataset_id else None
    if dataset is None:
        return {"test_accuracy": None, "torch_test_accuracy": None, "note": "the model's dataset was deleted"}
    index = {label: i for i, label in enumerate(reference.prep.labels)}
    truth: list[int] = []
    ours: list[int] = []
    theirs: list[int] = []
    for batch in record_batches(store, dataset_key(dataset.id), "test", EVAL_BATCH):
        rows = [r for r in batch if r.get("label") in index][: MAX_TEST_ROWS - len(truth)]
        if not rows:
            continue
        inputs = [r["image"] if "image_entry" in r else r["text"] for r in rows]
        truth += [index[r["label"]] for r in rows]
        ours += converted.forward(converted.encode(inputs)).argmax(dim=1).tolist()
        theirs += reference.forward(reference.encode(inputs)).argmax(dim=1).tolist()
        if len(truth) >= MAX_TEST_ROWS:
            break
    if not truth:
        return {"test_accuracy": None, "torch_test_accuracy": None, "note": "the dataset has no labelled test rows"}
    y, a, b = np.array(truth), np.array(ours), np.array(theirs)
    accuracy, torch_accuracy = float((a == y).mean()), float((b == y).mean())
    return {
        "test_accuracy": round(accuracy, 6),
        "torch_test_accuracy": round(torch_accuracy, 6),
        "accuracy_change_points": round((accuracy - torch_accuracy) * 100, 2),
        "agreement_with_torch": round(float((a == b).mean()), 6),
        "test_examples": len(truth),
        "dataset_id": dataset.id,
    }
