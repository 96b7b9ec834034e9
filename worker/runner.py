"""One job, start to finish: claim, read the spec, build the run, resume or start, fit, test the best checkpoint,
export and register the model. Every way it can end is written to the job row through app.jobs.lifecycle."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel
from sqlalchemy.orm import Session

from app.artifacts.layout import model_key, read_dataset
from app.artifacts.store import ArtifactStore, folder_bytes
from app.config import Settings
from app.db import Database, new_id
from app.jobs import lifecycle
from app.jobs.lifecycle import Event, Send
from app.jobs.memory import MB
from app.jobs.service import JobSpec, read_job_spec
from app.jobs.stop_reasons import Cancelled, HandedBack, JobFailed, LostLease, Pruned, user_facing
from app.processes import worker_identity
from app.registry.service import register_model
from app.sweeps.study import TrialReporter
from app.tasktypes.calibration import save_temperature
from worker.checkpoints import CheckpointWriter, resume_latest
from worker.context import JobContext
from worker.db_retry import retrying
from worker.hooks import SHUTTING_DOWN, DbHooks, Heartbeat
from worker.reports import evaluation_report, example_references
from worker.sweep_trials import after_trial, open_trial
from worker.training.adapters import save_merged, trainable_summary
from worker.training.checkpoint import load_weights
from worker.training.distributed import RunRecipe, injected_oom_step, ranks_for
from worker.training.loop import Run, fit
from worker.training.probe import baselines_and_head_start
from worker.verdict import compare_with_baselines, describe_baselines, model_metrics, verdict_on_baselines

log = logging.getLogger(__name__)


def worker_name() -> str:
    return worker_identity(os.getpid())


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def worker_devices(settings: Settings) -> tuple[int, str]:
    """How many devices this worker holds (FINETUNE_WORKER_GPUS, else the visible GPUs, else 1 CPU) and their kind."""
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return settings.worker_gpus or (torch.cuda.device_count() if kind == "cuda" else 1), kind


def run_next_jobs(hint: str, settings: Settings, db: Database, store: ArtifactStore, send: Send) -> None:
    """A message woke this worker: claim the job the scheduling rule puts first in this worker's pool and run it,
    then the next, until none is claimable (or the worker is shutting down).

    The message's job (`hint`) does not decide: it may run here, on another worker, or later, by its team's share.
    Every queued job's dispatch sends one message, so a message that finds nothing claimable (its job ran on another
    worker's loop, was cancelled, or waits for its team's cap) is simply acked; a job that waits past its messages is
    woken by the reaper (app/jobs/reaper.py) when a worker of its pool is idle. A redelivered message only claims
    again, which is always safe."""
    devices, _ = worker_devices(settings)

    def claim() -> lifecycle.Claimed | None:
        with db.session() as session:
            return lifecycle.claim_next(session, settings, worker_name(), settings.worker_pool, devices)

    claimed_any = False
    while not SHUTTING_DOWN.is_set():
        claimed = retrying(claim, what="claim")
        if claimed is None:
            break
        claimed_any = True
        if claimed.job_id != hint:
            log.info("woken for job %s, claimed job %s (it comes first in pool %s)", hint, claimed.job_id,
                     settings.worker_pool)  # fmt: skip
        run_job(claimed.job_id, claimed.attempt, settings, db, store, send)
    if not claimed_any:
        log.info("woken for job %s: nothing claimable in pool %s", hint, settings.worker_pool)


def run_job(job_id: str, attempt: int, settings: Settings, db: Database, store: ArtifactStore, send: Send) -> None:
    """Run the job this worker claimed (as `attempt`); every outcome ends in the job row."""
    workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-", dir=_work_root(settings)))
    ctx = JobContext(job_id, attempt, workdir, db, store, settings)
    heartbeat = Heartbeat(ctx)
    heartbeat.start()
    ended = True  # in a final state (not handed back, not lost)
    trial: tuple[str, TrialReporter | None] | None = None
    try:
        trial = open_trial(ctx)
        hooks = DbHooks(ctx, heartbeat, CheckpointWriter(ctx), trial[1] if trial else None)
        train(ctx, hooks)
    except Cancelled:
        hooks.flush()
        _finish(ctx, Event.stop_cancelled, "cancelled at a step boundary")
    except Pruned as stop:
        hooks.flush()
        _finish(ctx, Event.prune, stop.reason)
    except HandedBack:
        ended = False
        reason = "worker shutting down: checkpointed and handed back to the queue"
        ctx.transact("hand-back", lambda session: lifecycle.hand_back(session, job_id, attempt, reason))
        ctx.transact("dispatch", lambda session: lifecycle.dispatch(session, job_id, send))
    except LostLease:
        ended = False
        log.warning("job %s: attempt %s lost its lease; stopping without writing", job_id, attempt)
    except Exception as exc:  # every failure must end in the job row
        if not isinstance(exc, JobFailed):
            log.exception("job %s failed", job_id)
        reason = user_facing(exc)
        try:
            _finish(ctx, Event.fail, reason, error=reason)
        except LostLease:
            pass
    finally:
        heartbeat.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if ended and trial is not None:
        after_trial(ctx, trial[0], send)


def train(ctx: JobContext, hooks: DbHooks) -> None:
    """The job's run from its spec to a registered model (on `gpus` devices: this process is rank 0, see
    worker/training/distributed.py)."""
    from worker.training.setup import build_run

    spec = ctx.transact("job spec", lambda session: read_job_spec(session, ctx.settings, ctx.job_id))
    hp = spec.hyperparameters
    base_path = spec.base_model.local_folder(ctx.store)
    records = read_dataset(ctx.store, spec.dataset_key)
    references = example_references(records, spec.dataset_id)
    budget = ctx.settings.job_memory_budget_mb * MB
    recipe = RunRecipe(spec.task, base_path, spec.labels, records, hp, budget)
    del records
    device = pick_device()
    with ranks_for(spec.gpus, device, recipe) as ranks:
        try:
            run, notes = build_run(spec.task, base_path, spec.labels, recipe.records, hp, device, budget)
        except (OSError, ValueError, KeyError) as exc:
            raise JobFailed(
                f"could not load base model '{spec.base_model.name}' for {spec.task}: {user_facing(exc)}"
            ) from exc
        del recipe
        run.oom_at_step = injected_oom_step(ctx.settings, rank=0)
        hooks.event("precision", f"training in {run.precision.reason}")
        if hp.precision == "auto" or run.precision.name != hp.precision:
            hooks.record_auto("precision", run.precision.reason)
        baselines = baselines_and_head_start(run)
        for note in [*notes, *baselines.notes]:
            hooks.event("note", note)
        hooks.event("baselines", describe_baselines(baselines))
        hooks.set_progress(total_steps=run.total_steps)
        if resume_latest(ctx, run, hooks.event):
            hooks.set_progress(step=run.state.step, epoch=run.state.epoch)
        hooks.flush()
        state = fit(run, ranks.lead(run, hooks) if ranks else hooks)
    hooks.flush()
    if state.stopped_early and hp.early_stopping is not None:
        hooks.event(
            "early_stopped", f"early stopping at step {state.step}: {hp.early_stopping.metric} stopped improving"
        )
    report = test_best(run, ctx.store, references)
    report.update(strategy=run.hp.strategy, **compare_with_baselines(report, baselines, state.top_val_accuracy))
    report.update(trainable_summary(run.model, run.hp.adapter))
    kind, verdict = verdict_on_baselines(report)
    hooks.event(kind, verdict)
    model_id = export_model(run, ctx, spec.base_model.name, report["calibration"])
    ctx.transact("model registration", lambda session: _register(session, ctx, spec, model_id, report))


def test_best(run: Run, store: ArtifactStore, references: dict[str, list[dict]]) -> dict:
    """Load the best checkpoint's weights and write the full report on the test split (worker/reports.py)."""
    if run.state.best_checkpoint:
        load_weights(store.local_dir(run.state.best_checkpoint), run.model)
    report = evaluation_report(run, references)
    report.update(best_step=run.state.best_step, steps_trained=run.state.step)
    return report


def export_model(run: Run, ctx: JobContext, base_model_name: str, calibration: dict) -> str:
    """Save the model in Hugging Face format (config with id2label, safetensors, processor) to the store, with the
    temperature fitted on the validation split (`calibration`, the report's) in calibration.json; a model trained
    with an adapter is saved with the adapter merged into its weights, and the adapter beside it."""
    model_id = new_id()
    folder = _export_folder(ctx)
    model = save_merged(run.model, folder, base_model_name) if isinstance(run.model, PeftModel) else run.model
    model.save_pretrained(str(folder), safe_serialization=True)
    run.spec.save_processor(run.processor, folder, run.prep)
    run.prep.save(folder)
    if calibration["temperature"] is not None:
        c = calibration
        save_temperature(folder, c["temperature"], c["temperature_fitted_on"], c["ece"], c["ece_calibrated"])
    ctx.store.put_dir(folder, model_key(model_id))
    return model_id


def _export_folder(ctx: JobContext) -> Path:
    return ctx.workdir / "export"


def _register(session: Session, ctx: JobContext, spec: JobSpec, model_id: str, report: dict) -> None:
    """The job succeeds and its model is registered, in one transaction."""
    below = report["below_baseline"]
    message = f"registered model {model_id}"
    values = {"report": report, "model_id": model_id, "below_baseline": below}
    lifecycle.finish(session, ctx.job_id, ctx.attempt, Event.succeed, message, **values)
    register_model(
        session, model_id=model_id, team_id=spec.team_id, job_id=ctx.job_id, task=spec.task,
        name=f"{Path(spec.base_model.name).name} on {spec.dataset_name}", base_model=spec.base_model.name,
        labels=spec.labels, storage_key=model_key(model_id), below_baseline=below, metrics=model_metrics(report),
        size_bytes=folder_bytes(_export_folder(ctx)),
    )  # fmt: skip


def _finish(ctx: JobContext, event: Event, message: str, **values: object) -> None:
    ctx.transact(
        f"job {event}", lambda session: lifecycle.finish(session, ctx.job_id, ctx.attempt, event, message, **values)
    )


def _work_root(settings: Settings) -> Path:
    root = settings.var_dir / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root
