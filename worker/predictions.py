"""A worker's part of POST /predictions: a dataset (or one split) through a model, a batch at a time, its results
as one CSV and one JSONL file in the artifact store.

The rows stream from the stored dataset (images read from its zip a batch at a time) and the results go to local
temporary files a batch at a time, so memory holds one batch whatever the dataset's size. The files are copied to
the store under the run's key when every row is scored: a run that starts over (its message re-delivered after its
worker died) rewrites them whole, and nobody ever reads half a file."""

from __future__ import annotations

import csv
import json
import logging
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from app.artifacts.layout import record_batches
from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import Database
from app.inference.cache import LoadedModel, load_served_model
from app.jobs.stop_reasons import user_facing
from app.predictions import service
from app.predictions.service import Claimed
from worker.db_retry import retrying

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The run was cancelled, or claimed again by a newer attempt: this one stops writing."""


def run_batch_prediction(run_id: str, settings: Settings, db: Database, store: ArtifactStore) -> None:
    """Claim the run, score every row, store the results and count their bytes (the team's storage), mark it
    succeeded (or failed with a reason)."""

    def transact(fn: Any) -> Any:
        def attempt() -> Any:
            with db.session() as session:
                return fn(session)

        return retrying(attempt, what="prediction run")

    claimed: Claimed | None = transact(lambda session: service.claim(session, run_id))
    if claimed is None:
        log.info("prediction run %s: not queued (finished, cancelled or deleted); skipping", run_id)
        return
    log.info("prediction run %s: attempt %s", run_id, claimed.attempt)

    def report(rows_done: int) -> None:
        if not transact(lambda session: service.progress(session, run_id, claimed.attempt, rows_done)):
            raise Stopped

    try:
        rows_done = score(claimed, settings, store, report)
        stored = store.size(claimed.storage_key)
    except Stopped:
        log.info("prediction run %s: cancelled or taken over; attempt %s stops", run_id, claimed.attempt)
        return
    except Exception as exc:  # the reason is kept for the user; the log has the traceback
        log.exception("prediction run %s failed", run_id)
        reason = user_facing(exc)
        transact(lambda session: service.fail(session, run_id, claimed.attempt, reason))
        return
    if not transact(lambda session: service.record_size(session, run_id, stored)):
        log.info("prediction run %s: deleted while its results were stored; removing them", run_id)
        store.delete_prefix(claimed.storage_key)
        return
    transact(lambda session: service.succeed(session, run_id, claimed.attempt, rows_done))


def score(claimed: Claimed, settings: Settings, store: ArtifactStore, report: Any) -> int:
    """Every row of the run's dataset (split) through its model into results.csv and results.jsonl; rows scored."""
    loaded = load_served_model(claimed.model_id, store.local_dir(claimed.model_storage_key))
    report(0)  # the lease again after a slow download, and a cancel during it stops the run here
    done = 0
    with tempfile.TemporaryDirectory(prefix="predictions-") as tmp, ExitStack() as files:
        csv_path, jsonl_path = Path(tmp) / "results.csv", Path(tmp) / "results.jsonl"
        csv_file = files.enter_context(open(csv_path, "w", newline="", encoding="utf-8"))
        jsonl_file = files.enter_context(open(jsonl_path, "w", encoding="utf-8"))
        writer = ResultWriter(csv_file, jsonl_file, claimed.top_k)
        for batch in record_batches(
            store, claimed.dataset_storage_key, claimed.split, settings.batch_predict_batch_size
        ):
            writer.write(batch, top_k(loaded, batch, claimed.top_k))
            done += len(batch)
            report(done)
        files.close()
        store.put_file(csv_path, f"{claimed.storage_key}/results.csv")
        store.put_file(jsonl_path, f"{claimed.storage_key}/results.jsonl")
    return done


def top_k(loaded: LoadedModel, batch: list[dict[str, Any]], k: int) -> list[list[tuple[str, float]]]:
    """Per row, the k most probable labels with their probabilities, highest first (what POST /predict answers)."""
    inputs = [row["image"] if "image_entry" in row else row["text"] for row in batch]
    logits = loaded.forward(loaded.encode(inputs))
    top = logits.softmax(dim=-1).topk(min(k, logits.shape[1]), dim=1)
    labels = loaded.prep.labels
    return [
        [(labels[i], round(p, 6)) for p, i in zip(ps, ids, strict=True)]
        for ps, ids in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


class ResultWriter:
    """One line per row in each format. CSV: row, split, text or image, label (the dataset's), prediction and
    score, then prediction_2, score_2 ... up to top_k. JSONL: the same, the top k as a list under "top_k"."""

    def __init__(self, csv_file: IO[str], jsonl_file: IO[str], k: int) -> None:
        self.csv = csv.writer(csv_file)
        self.jsonl = jsonl_file
        self.k = k
        self.header_written = False

    def write(self, batch: list[dict[str, Any]], predictions: list[list[tuple[str, float]]]) -> None:
        for row, top in zip(batch, predictions, strict=True):
            source = ("image", row["image_entry"]) if "image_entry" in row else ("text", row["text"])
            if not self.header_written:
                extra = [f"{name}_{n}" for n in range(2, self.k + 1) for name in ("prediction", "score")]
                self.csv.writerow(["row", "split", source[0], "label", "prediction", "score", *extra])
                self.header_written = True
            cells = [cell for pair in top for cell in pair]
            self.csv.writerow([row["row"], row["split"], source[1], row["label"], *cells])
            line = {
                "row": row["row"],
                "split": row["split"],
                source[0]: source[1],
                "label": row["label"] or None,  # an uploaded file may have no labels
                "prediction": top[0][0],
                "score": top[0][1],
                "top_k": [{"label": label, "score": p} for label, p in top],
            }
            self.jsonl.write(json.dumps(line, ensure_ascii=False) + "\n")
