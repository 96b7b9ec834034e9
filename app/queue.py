"""The Celery application both sides share: the API only sends task names, workers run them."""

from __future__ import annotations

from celery import Celery

from app.config import Settings

TRAIN_TASK = "finetune.train"
CHECKPOINT_REPORT_TASK = "finetune.checkpoint_report"  # on the training queue: it needs a worker's model and data
BATCH_PREDICT_TASK = "finetune.batch_predict"  # on the training queue too: a worker loads the model
TRAINING_QUEUE = "training"
# Longer than any job: a message is redelivered only if its worker died without acking.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`: late acks, one job at a time per worker process."""
    app = Celery("finetune", broker=settings.broker_url)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=TRAINING_QUEUE,
        task_routes={
            name: {"queue": TRAINING_QUEUE} for name in (TRAIN_TASK, CHECKPOINT_REPORT_TASK, BATCH_PREDICT_TASK)
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if not (settings.broker_url or "").startswith("sqla+"):
        # kombu passes transport options to create_engine() for the SQLAlchemy transport, which rejects them.
        app.conf.broker_transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return app


def enqueue_training(celery: Celery, job_id: str) -> None:
    """Send the job id (never an ORM object); call only after the job row is committed."""
    celery.send_task(TRAIN_TASK, args=[job_id], queue=TRAINING_QUEUE)


def enqueue_checkpoint_report(celery: Celery, checkpoint_id: str) -> None:
    """Ask a worker for a checkpoint's evaluation report (see app/jobs/checkpoint_reports.py); after the commit."""
    celery.send_task(CHECKPOINT_REPORT_TASK, args=[checkpoint_id], queue=TRAINING_QUEUE)


def enqueue_batch_prediction(celery: Celery, run_id: str) -> None:
    """Send a committed prediction run's id to the workers (see app/predictions/service.py)."""
    celery.send_task(BATCH_PREDICT_TASK, args=[run_id], queue=TRAINING_QUEUE)
