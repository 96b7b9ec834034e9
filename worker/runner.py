"""One job, start to finish: claim, prepare, fit, test the best checkpoint, register the model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch

from app.config import Settings
from app.datasets.models import Dataset
from app.datasets.store import read_dataset
from app.db import Database, new_id
from app.errors import AppError
from app.jobs import lifecycle
from app.jobs.lifecycle import LostLease
from app.jobs.models import JobStatus, TrainingJob
from app.jobs.schemas import Hyperparameters
from app.models.resolve import resolve_base_model
from app.models.service import register_model
from app.storage import ArtifactStore
from worker.training.checkpoint import load_weights, save_checkpoint
from worker.training.evaluation import classification_summary
from worker.training.loop import JobCancelled, Run, evaluate, fit

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 1.0


class DbHooks:
    """The loop's reports, written to the database in batches and fenced by the attempt."""

    def __init__(self, db: Database, store: ArtifactStore, job_id: str, attempt: int, workdir: Path) -> None:
        self.db, self.store, self.job_id, self.attempt, self.workdir = db, store, job_id, attempt, workdir
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.cancel_requested = False
        self.progress: dict = {}

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        for name, value in (("train_loss", loss), ("learning_rate", lr), ("samples_per_s", samples_per_s)):
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.progress = {"step": step, "epoch": int(epoch)}
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.flush()

    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.flush()

    def should_stop(self) -> bool:
        return self.cancel_requested

    def flush(self, **extra: object) -> None:
        with self.db.session() as session:
            self.cancel_requested = lifecycle.write_metrics(
                session, self.job_id, self.attempt, self.pending, **self.progress, **extra
            )
        self.pending, self.last_flush = [], time.monotonic()

    def event(self, kind: str, message: str) -> None:
        with self.db.session() as session:
            lifecycle.add_event(session, self.job_id, self.attempt, kind, message)

    def save_checkpoint(self, run: Run, metric_name: str, value: float, is_best: bool) -> None:
        s = run.state
        name = f"step-{s.step:08d}"
        key = f"jobs/{self.job_id}/checkpoints/{name}"
        folder = save_checkpoint(self.workdir / "checkpoints" / name, run.model, run.optimizer, run.scheduler, s)
        if not self.store.is_local or Path(self.store.path(key)) != folder:
            self.store.put_dir(folder, key)
        if is_best:
            s.best_checkpoint = key
        self.flush(best_metric_name=metric_name, best_metric=s.best_value)
        with self.db.session() as session:
            stale = lifecycle.record_checkpoint(
                session,
                self.job_id,
                self.attempt,
                step=s.step,
                epoch=s.epoch,
                key=key,
                metric=metric_name,
                value=value,
                best=is_best,
            )
            lifecycle.add_event(
                session,
                self.job_id,
                self.attempt,
                "checkpoint",
                f"checkpoint at step {s.step} ({metric_name}={value:.4f})",
            )
        for stale_key in stale:
            self.store.delete_prefix(stale_key)
            shutil.rmtree(self.workdir / "checkpoints" / stale_key.rsplit("/", 1)[-1], ignore_errors=True)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run_job(job_id: str, settings: Settings, db: Database, store: ArtifactStore) -> None:
    """Run `job_id` if this worker can claim it; every outcome ends in the job row."""
    with db.session() as session:
        attempt = lifecycle.claim_job(session, job_id, worker_name())
    if attempt is None:
        log.info("job %s is not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_work_root(settings)))
    hooks = DbHooks(db, store, job_id, attempt, workdir)
    try:
        _train(job_id, attempt, settings, db, store, hooks)
    except JobCancelled:
        hooks.flush()
        _finish(db, job_id, attempt, JobStatus.cancelled, "cancelled", "cancelled at a step boundary")
    except LostLease:
        log.warning("job %s: attempt %s lost its lease; stopping without writing", job_id, attempt)
    except Exception as exc:  # noqa: BLE001  (every failure must end in the job row)
        log.exception("job %s failed", job_id)
        reason = exc.detail if isinstance(exc, AppError) else f"{exc.__class__.__name__}: {exc}"
        with contextlib.suppress(LostLease):
            _finish(db, job_id, attempt, JobStatus.failed, "failed", reason, error=reason)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train(job_id: str, attempt: int, settings: Settings, db: Database, store: ArtifactStore, hooks: DbHooks) -> None:
    from worker.training.setup import build_run

    with db.session() as session:
        job = session.get(TrainingJob, job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise AppError("the job's dataset was deleted; upload it again and submit a new job")
        base_path = resolve_base_model(session, store, settings.models_dir, job.team_id, job.base_model)
        team_id, task, base_model, labels = job.team_id, job.task, job.base_model, list(dataset.labels)
        dataset_key, dataset_name = dataset.storage_key, dataset.name
        hp = Hyperparameters.model_validate(job.hyperparameters)
    records = read_dataset(store, dataset_key)
    try:
        run, notes = build_run(task, base_path, labels, records, hp, pick_device())
    except (OSError, ValueError, KeyError) as exc:
        raise AppError(f"could not load base model '{base_model}' for {task}: {exc}") from exc
    del records
    for note in notes:
        hooks.event("note", note)
    hooks.progress = {"total_steps": run.total_steps}
    hooks.flush()
    state = fit(run, hooks)
    hooks.flush()
    if state.stopped_early:
        hooks.event(
            "early_stopped", f"early stopping at step {state.step}: no improvement in {hp.early_stopping.metric}"
        )
    report = _test_best(run, hooks)
    model_id = _export_model(run, store, hooks.workdir)
    metrics = {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_avg"]["f1"],
        "best_step": state.best_step,
    }
    with db.session() as session:
        register_model(
            session,
            model_id=model_id,
            team_id=team_id,
            job_id=job_id,
            name=f"{Path(base_model).name} on {dataset_name}",
            task=task,
            base_model=base_model,
            labels=labels,
            metrics=metrics,
            storage_key=f"models/{model_id}",
        )
        lifecycle.finish_job(session, job_id, attempt, JobStatus.succeeded, report=report, model_id=model_id)
        lifecycle.add_event(session, job_id, attempt, "succeeded", f"registered model {model_id}")


def _test_best(run: Run, hooks: DbHooks) -> dict:
    """Load the best checkpoint's weights and write the full report on the test split."""
    best = run.state.best_checkpoint
    if best:
        load_weights(hooks.workdir / "checkpoints" / best.rsplit("/", 1)[-1], run.model)
    split = "test" if len(run.splits["test"]) else "val"
    loss, labels, predicted = evaluate(run, split)
    report = classification_summary(labels, predicted, run.prep.labels, loss)
    report.update(split=split, best_step=run.state.best_step, steps_trained=run.state.step)
    return report


def _export_model(run: Run, store: ArtifactStore, workdir: Path) -> str:
    """Save the model in Hugging Face format (config with id2label, safetensors, processor) to the store."""
    model_id = new_id()
    folder = workdir / "export"
    run.model.save_pretrained(str(folder), safe_serialization=True)
    run.processor.save_pretrained(str(folder))
    run.prep.save(folder)
    store.put_dir(folder, f"models/{model_id}")
    return model_id


def _finish(
    db: Database, job_id: str, attempt: int, status: JobStatus, kind: str, message: str, **values: object
) -> None:
    with db.session() as session:
        lifecycle.finish_job(session, job_id, attempt, status, **values)
        lifecycle.add_event(session, job_id, attempt, kind, message)


def _work_root(settings: Settings) -> Path:
    root = settings.var_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root
