"""What a running job reports: metrics in batches, checkpoints, events, a heartbeat; all fenced by the attempt."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from pathlib import Path

from app.db import Database, is_connection_error
from app.jobs import lifecycle
from app.jobs.lifecycle import LostLease
from app.storage import ArtifactStore
from worker.db_retry import retrying
from worker.training.checkpoint import MANIFEST, save_checkpoint
from worker.training.loop import JobCancelled, Run

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 1.0

# Set when this worker process is asked to shut down (SIGTERM): running jobs hand themselves back.
SHUTTING_DOWN = threading.Event()


class HandedBack(Exception):
    """The job was checkpointed and returned to the queue because this worker is shutting down."""


class Heartbeat(threading.Thread):
    """Renews the job's lease every few seconds, whatever the training thread is doing."""

    def __init__(self, db: Database, job_id: str, attempt: int, every_s: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.db, self.job_id, self.attempt, self.every_s = db, job_id, attempt, every_s
        self.cancel_requested = False
        self.lost = False
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with self.db.session() as session:
                    self.cancel_requested = lifecycle.heartbeat(session, self.job_id, self.attempt)
            except LostLease:
                self.lost = True
                return
            except Exception as exc:  # noqa: BLE001  (a database outage: try again next beat)
                log.warning(
                    "heartbeat for job %s failed: %s", self.job_id, exc if is_connection_error(exc) else repr(exc)
                )

    def stop(self) -> None:
        self._stop.set()


class DbHooks:
    """The loop's reports, written to the database in batches and fenced by the attempt."""

    def __init__(
        self, db: Database, store: ArtifactStore, job_id: str, attempt: int, workdir: Path, heartbeat: Heartbeat
    ) -> None:
        self.db, self.store, self.job_id, self.attempt, self.workdir = db, store, job_id, attempt, workdir
        self.heartbeat = heartbeat
        self.pending: list[dict] = []
        self.last_flush = time.monotonic()
        self.cancel_requested = False
        self.progress: dict = {}
        self.checkpointed_step: int | None = None

    def log_step(self, step: int, epoch: float, loss: float, lr: float, samples_per_s: float) -> None:
        for name, value in (("train_loss", loss), ("learning_rate", lr), ("samples_per_s", samples_per_s)):
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.progress.update(step=step, epoch=int(epoch))
        if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
            self.try_flush()

    def log_eval(self, step: int, epoch: float, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.pending.append({"name": name, "step": step, "epoch": epoch, "value": value})
        self.flush()

    def at_step_boundary(self, run: Run) -> None:
        """Stop here if the job was cancelled, its lease lost, or this worker is shutting down."""
        if self.heartbeat.lost:
            raise LostLease(self.job_id)
        if self.cancel_requested or self.heartbeat.cancel_requested:
            raise JobCancelled
        if SHUTTING_DOWN.is_set() and run.state.step < run.total_steps and not run.state.stopped_early:
            if self.checkpointed_step != run.state.step:  # an evaluation may have just saved this very state
                self.save_checkpoint(run, None, None, False, kind="handoff")
            raise HandedBack

    def try_flush(self) -> None:
        """Flush if the database answers; during an outage keep the rows and try again later."""
        try:
            self.flush(retry=False)
        except LostLease:
            raise
        except Exception as exc:  # noqa: BLE001
            if not is_connection_error(exc):
                raise
            self.last_flush = time.monotonic()
            log.warning("job %s: metrics kept in memory while the database is unreachable", self.job_id)

    def flush(self, retry: bool = True, **extra: object) -> None:
        def write() -> bool:
            with self.db.session() as session:
                return lifecycle.write_metrics(
                    session, self.job_id, self.attempt, self.pending, **self.progress, **extra
                )

        self.cancel_requested = retrying(write, what="metrics") if retry else write()
        self.pending, self.last_flush = [], time.monotonic()

    def event(self, kind: str, message: str) -> None:
        def write() -> None:
            with self.db.session() as session:
                lifecycle.add_event(session, self.job_id, self.attempt, kind, message)

        retrying(write, what="event")

    def save_checkpoint(
        self, run: Run, metric_name: str | None, value: float | None, is_best: bool, kind: str = "evaluation"
    ) -> None:
        """Write the checkpoint completely to the store, then record it: a crash in between leaves no record."""
        s = run.state
        name = f"step-{s.step:08d}"
        key = f"jobs/{self.job_id}/checkpoints/{name}"
        if is_best:
            s.best_checkpoint = key
        folder = save_checkpoint(self.workdir / "checkpoints" / name, run.model, run.optimizer, run.scheduler, s)
        self.store.put_dir(folder, key, last=MANIFEST)
        manifest_sha256 = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
        self.flush(**({"best_metric_name": metric_name, "best_metric": s.best_value} if kind == "evaluation" else {}))

        def record() -> list[str]:
            with self.db.session() as session:
                stale = lifecycle.record_checkpoint(
                    session, self.job_id, self.attempt, step=s.step, epoch=s.epoch, key=key, kind=kind,
                    metric=metric_name, value=value, best=is_best, manifest_sha256=manifest_sha256,
                )  # fmt: skip
                detail = f"{metric_name}={value:.4f}" if metric_name is not None else kind
                lifecycle.add_event(
                    session, self.job_id, self.attempt, "checkpoint", f"checkpoint at step {s.step} ({detail})"
                )
                return stale

        stale_keys = retrying(record, what="checkpoint record")
        self.checkpointed_step = s.step
        for stale_key in stale_keys:
            self.store.delete_prefix(stale_key)
            shutil.rmtree(self.workdir / "checkpoints" / stale_key.rsplit("/", 1)[-1], ignore_errors=True)
