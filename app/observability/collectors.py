"""What a scrape reads from the database and the live-stream hub: jobs by state, the queue, the workers' heartbeats
and training speed. Workers report through the database they already write (each running job's `heartbeat_at` and
`worker`, and its `samples_per_s` metric rows), so one scrape of the API tells the story of every worker on every
machine, with no port to open on them (see README, "Operators' metrics")."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import Database, utcnow
from app.jobs.stream import StreamHub
from app.jobs.tables import JobStatus, Metric, TrainingJob

log = logging.getLogger(__name__)


def _jobs_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status))
    counts = {status: count for status, count in rows}
    return {state.value: counts.get(state.value, 0) for state in JobStatus}


def _oldest_queued(session: Session) -> datetime | None:
    return session.scalar(select(func.min(TrainingJob.created_at)).where(TrainingJob.status == JobStatus.queued))


def _running(session: Session) -> list[tuple[str, str | None, datetime | None]]:
    """(job id, worker, heartbeat) of every running job; the ids stay in this module, never in a label."""
    query = select(TrainingJob.id, TrainingJob.worker, TrainingJob.heartbeat_at)
    return [
        (job_id, worker, beat)
        for job_id, worker, beat in session.execute(query.where(TrainingJob.status == JobStatus.running))
    ]


def _latest_samples_per_s(session: Session, job_id: str) -> float | None:
    return session.scalar(
        select(Metric.value)
        .where(Metric.job_id == job_id, Metric.name == "samples_per_s")
        .order_by(Metric.step.desc())
        .limit(1)
    )


class ServiceCollector(Collector):
    """Gauges computed at scrape time, in one short session; a database that does not answer sets
    finetune_database_up to 0 and leaves the rest out, so the scrape itself still succeeds."""

    def __init__(self, db: Database, hub: StreamHub) -> None:
        self.db, self.hub = db, hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("finetune_live_streams", "Live job streams this API process holds", self.hub.count)
        up = GaugeMetricFamily("finetune_database_up", "1 if the database answered this scrape")
        try:
            families = list(self._from_database())
        except Exception as exc:
            log.warning("metrics: the database did not answer the scrape: %s", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_database(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        with self.db.session() as session:
            states = _jobs_by_state(session)
            oldest = _oldest_queued(session)
            running = _running(session)
            speeds = {job_id: _latest_samples_per_s(session, job_id) for job_id, _, _ in running}
        jobs = GaugeMetricFamily("finetune_jobs", "Jobs by state, all teams together", labels=["state"])
        for state, count in states.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("finetune_job_queue_depth", "Jobs queued, waiting for a worker", states["queued"])
        yield GaugeMetricFamily(
            "finetune_job_queue_oldest_age_seconds",
            "Age of the oldest queued job (0 when none waits): grows when no worker takes jobs",
            (now - oldest).total_seconds() if oldest else 0.0,
        )
        heartbeat_age = GaugeMetricFamily(
            "finetune_worker_heartbeat_age_seconds",
            "Seconds since the latest heartbeat of each worker that holds a running job (host:pid); a job whose "
            "heartbeat passes FINETUNE_LEASE_SECONDS is requeued",
            labels=["worker"],
        )
        samples = GaugeMetricFamily(
            "finetune_worker_samples_per_second",
            "Training throughput each busy worker last reported (its job's latest samples_per_s row)",
            labels=["worker"],
        )
        latest: dict[str, datetime] = {}
        speed_of: dict[str, float] = {}
        for job_id, worker, beat in running:
            worker = worker or "unknown"
            if beat is not None and (worker not in latest or beat > latest[worker]):
                latest[worker] = beat
            if (speed := speeds.get(job_id)) is not None:
                speed_of[worker] = speed_of.get(worker, 0.0) + speed
        for worker, beat in sorted(latest.items()):
            heartbeat_age.add_metric([worker], max(0.0, (now - beat).total_seconds()))
        for worker, speed in sorted(speed_of.items()):
            samples.add_metric([worker], speed)
        yield heartbeat_age
        yield samples
        yield GaugeMetricFamily("finetune_workers_busy", "Workers holding a running job", len(latest))
