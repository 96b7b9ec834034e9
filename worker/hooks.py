"""What a running job reports: metrics in batches, events, progress and a heartbeat; where it is told to stop.

Every write is fenced by the attempt (a stale trainer gets LostLease); checkpoints go through the CheckpointWriter."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy.orm import Session

from app.db import is_connection_error
from app.jobs import lifecycle, run_records
from app.jobs.stop_reasons import Cancelled, HandedBack, LostLease, Pruned
from app.sweeps.study import TrialReporter
from worker.checkpoints import CheckpointWriter
from worker.context import JobContext
from worker.training.loop import Run

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 1.0

# Set when this worker process is asked to shut down (SIGTERM): running jobs hand themselves back.
SHUTTING_DOWN = threading.Event()


class Heartbeat(threading.Thread):
    """Renews the job's lease every few seconds, whatever the training thread is doing."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.cancel_requested = False
        self.lost = False
        self._stopped = threading.Event()

    def run(self) -> None:
        ctx = self.ctx
        while not self._stopped.wait(ctx.settings.heartbeat_seconds):
            try:
                with ctx.db.session() as session:
                    self.cancel_requested = lifecycle.heartbeat(session, ctx.job_id, ctx.attempt)
            except LostLease:
                self.lost = True
                return
            except Exception as exc:  # a database outage: try again next beat
                log.warning(
                    "heartbeat for job %s failed: %s", ctx.job_id, exc if is_connection_error(exc) else repr(exc)
                )

    def stop(self) -> None:
        self._stopped.set()


class DbHooks:
    """The loop's reports, written to the database in batches."""

    def __init__(
        self, ctx: JobContext, heartbeat: Heartbeat, checkpoints: CheckpointWriter, trial: TrialReporter | None = None
    ) -> None:
        self.ctx, self.heartbeat, self.checkpoints = ctx, heartbeat, checkpoints
        self.trial = trial  # a sweep trial reports each evaluation to its study
        self.prune_reason: str | None = None
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.cancel_requested = False
        self.progress: dict[str, Any] = {}

    def set_progress(self, **fields: Any) -> None:
        """Job-row fields (total_steps, step, epoch) written with the next flush."""
        self.progress.update(fields)

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        for name, value in (("train_loss", loss), ("learning_rate", lr), ("samples_per_s", samples_per_s)):
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.set_progress(step=step, epoch=int(epoch))
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.try_flush()

    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.flush()
        if self.trial is not None:
            try:
                self.prune_reason = self.trial.report(step, values)
            except Exception as exc:  # the study's storage unreachable: train on, report at the next evaluation
                log.warning("job %s: could not report step %s to its study: %s", self.ctx.job_id, step, exc)

    def save_checkpoint(self, run: Run, metric_name: str | None, value: float | None, is_best: bool) -> None:
        """An evaluation's checkpoint; the job row shows the best metric so far."""
        self.flush(best_metric_name=metric_name, best_metric=run.state.best_value)
        self.checkpoints.write(run, kind="evaluation", metric=metric_name, value=value, best=is_best)

    def at_step_boundary(self, run: Run) -> None:
        """Stop here if the job was cancelled, its lease lost, its sweep's pruner said so, or this worker is shutting
        down."""
        if self.heartbeat.lost:
            raise LostLease(self.ctx.job_id)
        if self.cancel_requested or self.heartbeat.cancel_requested:
            raise Cancelled
        if self.prune_reason is not None:
            raise Pruned(self.prune_reason)
        if SHUTTING_DOWN.is_set() and run.state.step < run.total_steps and not run.state.stopped_early:
            if self.checkpoints.last_step != run.state.step:  # an evaluation may have just saved this very state
                self.flush()
                self.checkpoints.write(run, kind="handoff")
            raise HandedBack

    def try_flush(self) -> None:
        """Flush if the database answers; during an outage keep the rows and try again later."""
        try:
            self.flush(retry=False)
        except LostLease:
            raise
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self.last_flush = time.monotonic()
            log.warning("job %s: metrics kept in memory while the database is unreachable", self.ctx.job_id)

    def flush(self, retry: bool = True, **extra: Any) -> None:
        """Write the pending metric rows and progress (and renew the lease); notes a requested cancel."""
        ctx = self.ctx

        def write(session: Session) -> bool:
            return run_records.write_metrics(session, ctx.job_id, ctx.attempt, self.pending, **self.progress, **extra)

        if retry:
            self.cancel_requested = ctx.transact("metrics", write)
        else:
            with ctx.db.session() as session:
                self.cancel_requested = write(session)
        self.pending, self.last_flush = [], time.monotonic()

    def event(self, kind: str, message: str) -> None:
        ctx = self.ctx
        ctx.transact("event", lambda session: run_records.add_event(session, ctx.job_id, ctx.attempt, kind, message))

    def record_auto(self, name: str, reason: str) -> None:
        """What the worker decided for `name` (precision), in the job's stored spec under `auto`."""
        ctx = self.ctx
        ctx.transact("spec", lambda session: run_records.record_auto(session, ctx.job_id, ctx.attempt, name, reason))
