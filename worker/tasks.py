"""Thin Celery tasks and worker signals: a job id in, this process's own database session, the runner works."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import torch
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

import app.all_tables  # noqa: F401  (every table known to this process)
from app.artifacts.store import ArtifactStore
from app.config import get_settings
from app.db import Database
from app.fleet import service as fleet
from app.jobs.reaper import reap
from app.predictions import service as predictions
from app.queue import BATCH_PREDICT_TASK, CHECKPOINT_REPORT_TASK, TRAIN_TASK, enqueue_batch_prediction, enqueue_training
from app.sweeps.progress import advance_all
from worker.celery_app import celery_app
from worker.hooks import SHUTTING_DOWN
from worker.predictions import run_batch_prediction
from worker.reports import report_on_checkpoint
from worker.runner import run_next_jobs, worker_devices, worker_name

log = logging.getLogger(__name__)


@lru_cache
def _resources() -> tuple[Database, ArtifactStore]:
    """Engine and store built in the worker process on first use, never at import (fork safety)."""
    settings = get_settings()
    if settings.worker_threads:
        torch.set_num_threads(settings.worker_threads)
    return Database(settings.database_url), ArtifactStore.from_settings(settings)


def _send(job_id: str, pool: str) -> None:
    enqueue_training(celery_app, job_id, pool)


@celery_app.task(name=TRAIN_TASK, acks_late=True)
def train(job_id: str) -> None:
    """A wake-up for this worker's pool: it runs the best claimable jobs, `job_id` or others (worker/runner.py)."""
    db, store = _resources()
    run_next_jobs(job_id, get_settings(), db, store, _send)


@celery_app.task(name=CHECKPOINT_REPORT_TASK, acks_late=True)
def checkpoint_report(checkpoint_id: str) -> None:
    db, store = _resources()
    report_on_checkpoint(checkpoint_id, get_settings(), db, store)


@celery_app.task(name=BATCH_PREDICT_TASK, acks_late=True)
def batch_predict(run_id: str) -> None:
    db, store = _resources()
    run_batch_prediction(run_id, get_settings(), db, store)


def _send_prediction(run_id: str, pool: str) -> None:
    enqueue_batch_prediction(celery_app, run_id, pool)


@worker_shutting_down.connect
def _hand_jobs_back(**_: object) -> None:
    """SIGTERM (a deploy): the running job checkpoints at its next step and goes back to the queue."""
    SHUTTING_DOWN.set()


def _register() -> None:
    """Tell the fleet this worker's pool and devices (GET /pools; what jobs may ask for)."""
    settings = get_settings()
    db, _ = _resources()
    devices, kind = worker_devices(settings)
    with db.session() as session:
        fleet.register_worker(session, worker_name(), settings.worker_pool, devices, kind)
    log.info("worker %s serves pool %s with %s %s device(s)", worker_name(), settings.worker_pool, devices, kind)


def _fleet_heartbeat_loop() -> None:
    """Renew this worker's heartbeat (alive in GET /pools) until it shuts down; register again if forgotten."""
    db, _ = _resources()
    while not SHUTTING_DOWN.wait(get_settings().heartbeat_seconds):
        try:
            with db.session() as session:
                known = fleet.beat(session, worker_name())
            if not known:
                _register()
        except Exception as exc:  # the database is down: next beat
            log.warning("fleet heartbeat failed: %s", exc)


@worker_shutdown.connect
def _unregister(**_: object) -> None:
    try:
        db = _resources()[0]
        with db.session() as session:
            fleet.stopped(session, worker_name())
    except Exception as exc:  # its heartbeat simply stops; it is no longer alive after the lease
        log.warning("could not mark worker %s stopped: %s", worker_name(), exc)


def reap_once() -> None:
    """Requeue jobs whose worker was lost, re-send queued jobs whose message may have been lost, and move sweeps on
    (tell their studies how trials ended, start new trials) should a worker have died before it did; the same for
    batch prediction runs (a lost one starts over)."""
    db, store = _resources()
    with db.session() as session:
        reaped = reap(session, get_settings(), _send)
        advance_all(session, get_settings(), store, _send)
        resent = predictions.reap(session, get_settings(), _send_prediction)
    if resent:
        log.info("reaper: prediction runs sent again %s", resent)
    if reaped.sent or reaped.failed or reaped.cancelled:
        log.info("reaper: sent %s, failed %s, cancelled %s", reaped.sent, reaped.failed, reaped.cancelled)


def _reaper_loop() -> None:
    interval = get_settings().reaper_interval_seconds
    while not SHUTTING_DOWN.wait(interval):
        try:
            reap_once()
        except Exception as exc:  # database or broker down: next round
            log.warning("reaper round failed: %s", exc)


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    try:
        _register()
    except Exception as exc:  # the heartbeat loop registers it once the database answers
        log.warning("could not register worker %s: %s", worker_name(), exc)
    threading.Thread(target=_fleet_heartbeat_loop, name="fleet-heartbeat", daemon=True).start()
    threading.Thread(target=_reaper_loop, name="reaper", daemon=True).start()
