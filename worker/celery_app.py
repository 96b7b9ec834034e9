"""The worker's Celery app: run with `celery -A worker.celery_app worker -P solo -Q training` (one per GPU)."""

from __future__ import annotations

from app.config import get_settings
from app.queue import make_celery

celery_app = make_celery(get_settings())
celery_app.conf.imports = ("worker.tasks",)
