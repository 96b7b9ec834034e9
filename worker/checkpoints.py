"""A job's checkpoints in the store: writing one (save, upload, verify, record, prune) and resuming from the newest."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from app.artifacts.layout import checkpoint_key
from app.artifacts.store import folder_bytes
from app.jobs import run_records
from app.jobs.stop_reasons import user_facing
from worker.context import JobContext
from worker.training.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
from worker.training.loop import Run


class CheckpointWriter:
    """Writes each checkpoint completely to the store before recording it: a crash in between leaves no record."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.last_step: int | None = None  # the step of the newest checkpoint this attempt wrote

    def write(
        self, run: Run, *, kind: str, metric: str | None = None, value: float | None = None, best: bool = False
    ) -> None:
        """Save the run's whole state, upload it, check the upload, record it, then delete what it supersedes."""
        ctx, s = self.ctx, run.state
        key = checkpoint_key(ctx.job_id, s.step)
        if best:
            s.best_checkpoint = key
        folder = save_checkpoint(self._local(key), run.model, run.optimizer, run.scheduler, s, run.scaler)
        ctx.store.put_dir(folder, key, last=MANIFEST)
        manifest = (folder / MANIFEST).read_bytes()
        if ctx.store.get_bytes(f"{key}/{MANIFEST}") != manifest:
            raise OSError(f"checkpoint at step {s.step} did not reach the artifact store intact")
        size = folder_bytes(folder)
        detail = f"{metric}={value:.4f}" if metric is not None and value is not None else kind

        def record(session: Session) -> list[str]:
            stale = run_records.record_checkpoint(
                session, ctx.job_id, ctx.attempt, step=s.step, epoch=s.epoch, key=key, kind=kind, metric=metric,
                value=value, best=best, manifest_sha256=hashlib.sha256(manifest).hexdigest(), size_bytes=size,
            )  # fmt: skip
            run_records.add_event(
                session, ctx.job_id, ctx.attempt, "checkpoint", f"checkpoint at step {s.step} ({detail})"
            )
            return stale

        stale_keys = ctx.transact("checkpoint record", record)
        self.last_step = s.step
        for stale in stale_keys:
            ctx.store.delete_prefix(stale)
            shutil.rmtree(self._local(stale), ignore_errors=True)

    def _local(self, key: str) -> Path:
        return self.ctx.workdir / "checkpoints" / key.rsplit("/", 1)[-1]


def resume_latest(ctx: JobContext, run: Run, event: Callable[[str, str], None]) -> bool:
    """Continue from the newest readable checkpoint an earlier attempt left (older ones are fallbacks); True if the
    run now starts from one. What the lost attempt logged after it is dropped."""
    rows = ctx.transact(
        "checkpoint lookup",
        lambda session: [
            (c.id, c.storage_key, c.step) for c in run_records.checkpoints_newest_first(session, ctx.job_id)
        ],
    )
    for checkpoint_id, key, step in rows:
        try:
            run.state = load_checkpoint(ctx.store.local_dir(key), run.model, run.optimizer, run.scheduler, run.scaler)
            break
        except Exception as exc:  # missing or corrupt files: fall back to an older checkpoint
            event(
                "checkpoint_unreadable",
                f"checkpoint at step {step} is unreadable ({user_facing(exc)}); trying an older one",
            )
            _forget(ctx, checkpoint_id)
    else:
        return False
    s = run.state

    def rewind(session: Session) -> None:
        run_records.rewind_to(session, ctx.job_id, ctx.attempt, s.step, s.epoch)
        run_records.add_event(session, ctx.job_id, ctx.attempt, "resumed", f"resumed from step {s.step}")

    ctx.transact("resume", rewind)
    return True


def _forget(ctx: JobContext, checkpoint_id: str) -> None:
    """Drop the record of an unreadable checkpoint, so no later attempt tries it again."""
    ctx.transact("checkpoint cleanup", lambda session: run_records.drop_checkpoint(session, ctx.job_id, checkpoint_id))
