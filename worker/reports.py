"""The evaluation report on the test split: the job's own (its best checkpoint, at the end of the run) and any other
checkpoint's on request (GET /jobs/{id}/report?checkpoint=, see app/jobs/checkpoint_reports.py), computed alike."""

from __future__ import annotations

import logging
from typing import Any

from app.artifacts.layout import read_dataset
from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import Database
from app.jobs import checkpoint_reports
from app.jobs.memory import MB
from app.jobs.service import read_job_spec
from app.jobs.stop_reasons import user_facing
from worker.db_retry import retrying
from worker.training.checkpoint import load_weights
from worker.training.evaluation import actionable_evaluation, classification_summary, nll, text_snippet
from worker.training.loop import Run, split_logits

log = logging.getLogger(__name__)
REPORTED_SPLITS = ("val", "test")  # a report lists mistakes from the test split (the validation one without it)


def example_references(records: list[dict], dataset_id: str) -> dict[str, list[dict[str, Any]]]:
    """Per reported split, in the order the run holds its examples, what a report shows of each: a text snippet, or
    the image's entry in the dataset and the URL that serves it."""
    references: dict[str, list[dict[str, Any]]] = {split: [] for split in REPORTED_SPLITS}
    for r in records:
        if r["split"] not in references:
            continue
        if "image_entry" in r:
            entry = r["image_entry"]
            reference = {"image": entry, "image_url": f"/datasets/{dataset_id}/images/{entry}"}
        else:
            reference = {"text": text_snippet(r.get("text") or "")}
        references[r["split"]].append(reference)
    return references


def evaluation_report(run: Run, references: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The report on the run's current weights, on the test split (the validation split when there is none)."""
    split = "test" if len(run.splits["test"]) else "val"
    logits, labels = split_logits(run, split)
    val_logits, val_labels = (logits, labels) if split == "val" else split_logits(run, "val")
    names = run.prep.labels
    loss = nll(logits, labels) if len(labels) else 0.0
    report = classification_summary(labels, logits.argmax(axis=1), names, loss)
    report["split"] = split
    report.update(actionable_evaluation(logits, labels, val_logits, val_labels, names, references.get(split, [])))
    return report


def report_on_checkpoint(checkpoint_id: str, settings: Settings, db: Database, store: ArtifactStore) -> None:
    """A worker's part of GET /jobs/{id}/report?checkpoint=: the checkpoint's weights on its job's test split, the
    report kept with the checkpoint row (or why it could not be computed)."""

    def transact(fn: Any) -> Any:
        def attempt() -> Any:
            with db.session() as session:
                return fn(session)

        return retrying(attempt, what="checkpoint report")

    request = transact(lambda session: checkpoint_reports.claim(session, checkpoint_id))
    if request is None:
        log.info("checkpoint %s: no report queued (done, taken or deleted); skipping", checkpoint_id)
        return
    try:
        report = _compute(request, settings, db, store)
    except Exception as exc:  # the reason is kept for the user; the log has the traceback
        log.exception("checkpoint %s: report failed", checkpoint_id)
        reason = user_facing(exc)
        transact(lambda session: checkpoint_reports.fail(session, checkpoint_id, reason))
        return
    transact(lambda session: checkpoint_reports.save(session, checkpoint_id, report))


def _compute(
    request: checkpoint_reports.ReportRequest, settings: Settings, db: Database, store: ArtifactStore
) -> dict[str, Any]:
    from worker.runner import pick_device
    from worker.training.setup import build_run

    with db.session() as session:
        spec = read_job_spec(session, settings, request.job_id)
    records = read_dataset(store, spec.dataset_key)
    references = example_references(records, spec.dataset_id)
    base_path = spec.base_model.local_folder(store)
    budget = settings.job_memory_budget_mb * MB
    run, _ = build_run(spec.task, base_path, spec.labels, records, spec.hyperparameters, pick_device(), budget)
    del records
    load_weights(store.local_dir(request.storage_key), run.model)
    report = evaluation_report(run, references)
    report.update(checkpoint=request.checkpoint, steps_trained=request.checkpoint["step"])
    return report
