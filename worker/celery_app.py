"""The worker's Celery app: run with `celery -A worker.celery_app worker -P solo -Q training` (one per GPU)."""

from __future__ import annotations

from app.config import get_settings
from app.queue import TRAINING_QUEUE, make_celery, prepare_embedded_broker, queue_for

settings = get_settings()
# before Celery connects: its own queue, and the default pool's (where reports and batch predictions go)
prepare_embedded_broker(settings, {queue_for(settings.worker_pool), TRAINING_QUEUE})
celery_app = make_celery(settings)
celery_app.conf.imports = ("worker.tasks",)
