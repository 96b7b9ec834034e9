"""The Celery application both sides share: the API only sends task names, workers run them.

Each pool of workers consumes a queue of its own (`queue_for`); a message only wakes a worker of that pool, which then
claims the job the scheduling rule puts first (app/jobs/scheduling.py), not necessarily the one the message names."""

from __future__ import annotations

import fcntl
from collections.abc import Iterable
from pathlib import Path

from celery import Celery
from kombu import Connection
from kombu import Queue as BrokerQueue

from app.config import DEFAULT_POOL, Settings

TRAIN_TASK = "finetune.train"
CHECKPOINT_REPORT_TASK = "finetune.checkpoint_report"  # on the queue of the pool its job trained in
BATCH_PREDICT_TASK = "finetune.batch_predict"  # the same: the pool where its model was trained
TRAINING_QUEUE = "training"  # the default pool's queue (the name it had before pools)
# Longer than any job: a message is redelivered only if its worker died without acking.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def queue_for(pool: str) -> str:
    """The broker queue of a pool's workers: `training` for the default pool, `training.<pool>` for the others."""
    return TRAINING_QUEUE if pool == DEFAULT_POOL else f"{TRAINING_QUEUE}.{pool}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`: late acks, one job at a time per worker process."""
    app = Celery("finetune", broker=settings.broker_url)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=TRAINING_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if not (settings.broker_url or "").startswith("sqla+"):
        # kombu passes transport options to create_engine() for the SQLAlchemy transport, which rejects them.
        app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return app


def prepare_embedded_broker(settings: Settings, queues: Iterable[str]) -> None:
    """Create the embedded broker's tables and `queues` once, under a file lock. kombu's SQLAlchemy transport creates
    them lazily in each process, and processes that start together race ("table kombu_queue already exists", a
    UNIQUE failure on a queue's name): the worker that loses dies at start. Redis needs nothing."""
    url = settings.broker_url or ""
    prefix = "sqla+sqlite:///"
    if not url.startswith(prefix):
        return
    path = Path(url[len(prefix) :])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        with Connection(url) as connection:
            channel = connection.channel()
            for name in queues:
                BrokerQueue(name, routing_key=name).bind(channel).declare()


def enqueue_training(celery: Celery, job_id: str, pool: str = DEFAULT_POOL) -> None:
    """Wake a worker of `pool` (the message names the job, never an ORM object); call after the row is committed."""
    celery.send_task(TRAIN_TASK, args=[job_id], queue=queue_for(pool))


def enqueue_checkpoint_report(celery: Celery, checkpoint_id: str, pool: str = DEFAULT_POOL) -> None:
    """Ask a worker of `pool` (where the checkpoint's job trained: a fleet may have no default pool) for a
    checkpoint's evaluation report (app/jobs/checkpoint_reports.py)."""
    celery.send_task(CHECKPOINT_REPORT_TASK, args=[checkpoint_id], queue=queue_for(pool))


def enqueue_batch_prediction(celery: Celery, run_id: str, pool: str = DEFAULT_POOL) -> None:
    """Send a committed prediction run's id to the workers of `pool` (see app/predictions/service.py)."""
    celery.send_task(BATCH_PREDICT_TASK, args=[run_id], queue=queue_for(pool))
