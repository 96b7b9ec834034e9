"""The reaper against a real, migrated database: lost workers, cancelled jobs, used-up restarts, lost messages."""

from __future__ import annotations

from datetime import timedelta

import pytest

import app.all_tables  # noqa: F401
from app.config import Settings
from app.db import Database, utcnow
from app.jobs.lifecycle import claim, heartbeat
from app.jobs.reaper import reap
from app.jobs.stop_reasons import LostLease
from app.jobs.tables import JobEvent, JobStatus, TrainingJob
from app.queue import VISIBILITY_TIMEOUT_S, make_celery
from tests.factories import Sent, insert_job

SETTINGS = Settings(lease_seconds=60, heartbeat_seconds=10, max_restarts=2, requeue_after_seconds=300)


def _status(db: Database, job_id: str) -> TrainingJob:
    with db.session() as session:
        return session.get(TrainingJob, job_id)


def test_reaper_requeues_lost_jobs_and_respects_cancel_and_restart_limits(db):
    old = utcnow() - timedelta(seconds=120)
    lost = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=old, worker="w1")
    alive = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=utcnow(), worker="w2")
    cancelled = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=old, cancel_requested=True)
    exhausted = insert_job(db, status=JobStatus.running, attempt=3, heartbeat_at=old, worker="w3")
    unsent = insert_job(db, status=JobStatus.queued, enqueued_at=None)
    recently_sent = insert_job(db, status=JobStatus.queued, enqueued_at=utcnow())

    sent = Sent()
    with db.session() as session:
        reaped = reap(session, SETTINGS, sent)
    assert sorted(reaped.sent) == sorted(sent) == sorted([lost, unsent])
    assert reaped.cancelled == [cancelled] and reaped.failed == [exhausted]
    assert _status(db, lost).status == "queued" and _status(db, lost).worker is None
    assert _status(db, alive).status == "running"
    assert _status(db, cancelled).status == "cancelled"
    failed = _status(db, exhausted)
    assert failed.status == "failed" and "gave up after 2 restarts" in failed.error
    assert _status(db, recently_sent).enqueued_at is not None

    with db.session() as session:
        again = reap(session, SETTINGS, sent)
    assert again.sent == [] and again.failed == [] and again.cancelled == []
    with db.session() as session:
        kinds = {e.kind for e in session.query(JobEvent).filter(JobEvent.job_id.in_([lost, cancelled, exhausted]))}
    assert kinds == {"requeued", "cancelled", "failed"}


def test_a_stale_attempt_can_write_nothing(db):
    job_id = insert_job(db, status=JobStatus.queued)
    with db.session() as session:
        first = claim(session, job_id, "w1")
    with db.session() as session:
        assert claim(session, job_id, "w2") is None  # a duplicate message while it runs does nothing
        session.execute(
            TrainingJob.__table__.update()
            .where(TrainingJob.id == job_id)
            .values(status=JobStatus.queued, heartbeat_at=utcnow() - timedelta(hours=1))
        )
    with db.session() as session:
        second = claim(session, job_id, "w2")
    assert (first, second) == (1, 2)
    with pytest.raises(LostLease), db.session() as session:
        heartbeat(session, job_id, first)
    with db.session() as session:
        assert heartbeat(session, job_id, second) is False


def test_visibility_timeout_is_where_celery_reads_it_and_outlasts_the_lease():
    celery = make_celery(Settings(broker_url="redis://127.0.0.1:6379/0", database_url="sqlite://"))
    assert celery.conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S
    assert SETTINGS.lease_seconds < VISIBILITY_TIMEOUT_S
    assert celery.conf.task_acks_late and celery.conf.worker_prefetch_multiplier == 1
