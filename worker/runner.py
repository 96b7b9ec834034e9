"""One job, start to finish: claim, prepare, resume or start, fit, test the best checkpoint, register the model."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
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
from worker.db_retry import retrying
from worker.hooks import DbHooks, HandedBack, Heartbeat
from worker.training.checkpoint import load_checkpoint, load_weights
from worker.training.evaluation import classification_summary
from worker.training.loop import JobCancelled, Run, evaluate, fit

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def run_job(
    job_id: str, settings: Settings, db: Database, store: ArtifactStore, enqueue: Callable[[str], None]
) -> None:
    """Run `job_id` if this worker can claim it; every outcome ends in the job row."""

    def claim() -> int | None:
        with db.session() as session:
            return lifecycle.claim_job(session, job_id, worker_name())

    attempt = retrying(claim, what="claim")
    if attempt is None:
        log.info("job %s is not claimable (finished, cancelled or running elsewhere); skipping", job_id)
        return
    workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_work_root(settings)))
    heartbeat = Heartbeat(db, job_id, attempt, settings.heartbeat_seconds)
    heartbeat.start()
    hooks = DbHooks(db, store, job_id, attempt, workdir, heartbeat)
    try:
        _train(job_id, attempt, settings, db, store, hooks)
    except JobCancelled:
        hooks.flush()
        _finish(db, job_id, attempt, JobStatus.cancelled, "cancelled", "cancelled at a step boundary")
    except HandedBack:
        retrying(lambda: _hand_back(db, job_id, attempt), what="hand-back")
        enqueue(job_id)
    except LostLease:
        log.warning("job %s: attempt %s lost its lease; stopping without writing", job_id, attempt)
    except Exception as exc:  # noqa: BLE001  (every failure must end in the job row)
        log.exception("job %s failed", job_id)
        reason = exc.detail if isinstance(exc, AppError) else f"{exc.__class__.__name__}: {exc}"
        try:
            _finish(db, job_id, attempt, JobStatus.failed, "failed", reason, error=reason)
        except LostLease:
            pass
    finally:
        heartbeat.stop()
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
    resume_from_checkpoint(run, db, store, hooks)
    hooks.flush()
    state = fit(run, hooks)
    hooks.flush()
    if state.stopped_early:
        hooks.event(
            "early_stopped", f"early stopping at step {state.step}: {hp.early_stopping.metric} stopped improving"
        )
    report = _test_best(run, store)
    model_id = _export_model(run, store, hooks.workdir)
    metrics = {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_avg"]["f1"],
        "best_step": state.best_step,
    }

    def register() -> None:
        with db.session() as session:
            lifecycle.finish_job(session, job_id, attempt, JobStatus.succeeded, report=report, model_id=model_id)
            register_model(
                session, model_id=model_id, team_id=team_id, job_id=job_id, name=f"{Path(base_model).name} on {dataset_name}",
                task=task, base_model=base_model, labels=labels, metrics=metrics, storage_key=f"models/{model_id}",
            )  # fmt: skip
            lifecycle.add_event_unfenced(session, job_id, attempt, "succeeded", f"registered model {model_id}")

    retrying(register, what="model registration")


def resume_from_checkpoint(run: Run, db: Database, store: ArtifactStore, hooks: DbHooks) -> None:
    """Continue from the newest readable checkpoint, if an earlier attempt left one; older ones are fallbacks."""

    def newest_first() -> list[tuple[str, str, int]]:
        with db.session() as session:
            rows = lifecycle.checkpoints_newest_first(session, hooks.job_id)
            return [(c.id, c.storage_key, c.step) for c in rows]

    for checkpoint_id, key, step in retrying(newest_first, what="checkpoint lookup"):
        try:
            run.state = load_checkpoint(store.local_dir(key), run.model, run.optimizer, run.scheduler)
        except Exception as exc:  # noqa: BLE001  (missing or corrupt files: fall back to an older checkpoint)
            hooks.event(
                "checkpoint_unreadable", f"checkpoint at step {step} is unreadable ({exc}); trying an older one"
            )

            def forget(checkpoint_id: str = checkpoint_id) -> None:
                with db.session() as session:
                    lifecycle.drop_checkpoint(session, hooks.job_id, checkpoint_id)

            retrying(forget, what="checkpoint cleanup")
            continue

        def rewind() -> None:
            with db.session() as session:
                lifecycle.rewind_to(session, hooks.job_id, hooks.attempt, run.state.step, run.state.epoch)
                lifecycle.add_event(
                    session, hooks.job_id, hooks.attempt, "resumed", f"resumed from step {run.state.step}"
                )

        retrying(rewind, what="resume")
        hooks.progress.update(step=run.state.step, epoch=run.state.epoch)
        return


def _test_best(run: Run, store: ArtifactStore) -> dict:
    """Load the best checkpoint's weights and write the full report on the test split."""
    if run.state.best_checkpoint:
        load_weights(store.local_dir(run.state.best_checkpoint), run.model)
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
    run.spec.save_processor(run.processor, folder, run.prep)
    run.prep.save(folder)
    store.put_dir(folder, f"models/{model_id}")
    return model_id


def _hand_back(db: Database, job_id: str, attempt: int) -> None:
    with db.session() as session:
        lifecycle.hand_back(session, job_id, attempt, "worker shutting down: checkpointed and handed back to the queue")


def _finish(
    db: Database, job_id: str, attempt: int, status: JobStatus, kind: str, message: str, **values: object
) -> None:
    def write() -> None:
        with db.session() as session:
            lifecycle.finish_job(session, job_id, attempt, status, **values)
            lifecycle.add_event_unfenced(session, job_id, attempt, kind, message)

    retrying(write, what=f"job {status}")


def _work_root(settings: Settings) -> Path:
    root = settings.var_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root
