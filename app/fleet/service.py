"""The fleet: workers register their pool and devices and renew a heartbeat; the API checks what a job asks for
against the pools it knows and lists them.

Which pools exist: those in FINETUNE_POOLS (name:devices per worker), plus every pool a worker reported within
FINETUNE_POOL_MEMORY_SECONDS (alive or not: a pool whose workers are restarting still exists), plus `default` with
one device. A job may ask for a known pool and at most the most devices one of its workers holds (configured or
reported); anything else no worker could ever run, so it is refused at submit (422) naming the pools there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import DEFAULT_POOL, Settings
from app.db import rows_changed, utcnow
from app.errors import InvalidInput
from app.fleet.tables import FleetWorker
from app.jobs.scheduling import alive_workers
from app.jobs.tables import JobStatus, TrainingJob

# --- a worker's registration --------------------------------------------------------------------------------------


def register_worker(session: Session, name: str, pool: str, devices: int, device_kind: str) -> None:
    """A worker process starting (or starting again under the same name): its pool and devices, alive now."""
    now = utcnow()
    values = {"pool": pool, "devices": devices, "device_kind": device_kind, "started_at": now, "heartbeat_at": now,
              "stopped_at": None}  # fmt: skip
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = insert(FleetWorker).values(name=name, **values)
    session.execute(statement.on_conflict_do_update(index_elements=[FleetWorker.name], set_=values))


def beat(session: Session, name: str) -> bool:
    """Renew the worker's heartbeat; False when its row is gone (forgotten): register again."""
    statement = update(FleetWorker).where(FleetWorker.name == name).values(heartbeat_at=utcnow(), stopped_at=None)
    return rows_changed(session, statement) == 1


def stopped(session: Session, name: str) -> None:
    """The worker shut down cleanly: no longer alive, its pool still known."""
    session.execute(update(FleetWorker).where(FleetWorker.name == name).values(stopped_at=utcnow()))


def forget_old_workers(session: Session, settings: Settings) -> int:
    """Drop workers not heard from within FINETUNE_POOL_MEMORY_SECONDS (their pools are forgotten with them)."""
    cutoff = utcnow() - timedelta(seconds=settings.pool_memory_seconds)
    return rows_changed(session, delete(FleetWorker).where(FleetWorker.heartbeat_at < cutoff))


# --- pools --------------------------------------------------------------------------------------------------------


def configured_pools(settings: Settings) -> dict[str, int]:
    """FINETUNE_POOLS as {pool: devices per worker}, with `default` (1 device) unless it names it."""
    pools = {DEFAULT_POOL: 1}
    for item in filter(None, settings.pools.split(",")):
        name, devices = item.split(":")
        pools[name] = int(devices)
    return pools


def known_pools(session: Session, settings: Settings) -> dict[str, int]:
    """Every pool a job may ask for, with the most devices one of its workers holds (configured or reported)."""
    pools = configured_pools(settings)
    cutoff = utcnow() - timedelta(seconds=settings.pool_memory_seconds)
    for pool, devices in session.execute(
        select(FleetWorker.pool, FleetWorker.devices).where(FleetWorker.heartbeat_at >= cutoff)
    ):
        pools[pool] = max(pools.get(pool, 0), devices)
    return pools


def check_resources(session: Session, settings: Settings, pool: str, gpus: int) -> None:
    """422 when no worker of any known pool could ever run a job asking for `gpus` devices of `pool`."""
    pools = known_pools(session, settings)
    listed = ", ".join(f"{name} (up to {devices} per worker)" for name, devices in sorted(pools.items()))
    if pool not in pools:
        raise InvalidInput(
            f"No pool '{pool}'. The pools are: {listed}. Ask for one of them in resources.pool, or start a worker "
            f"with `finetune worker --pool {pool}` (or add it to FINETUNE_POOLS) first."
        )
    if gpus > pools[pool]:
        raise InvalidInput(
            f"resources asks for {gpus} devices in pool '{pool}', but its workers hold at most {pools[pool]}. "
            f"The pools are: {listed}. Ask for fewer devices or another pool."
        )


@dataclass
class WorkerView:
    name: str
    devices: int
    device_kind: str
    running_job: bool
    heartbeat_at: datetime


@dataclass
class PoolView:
    name: str
    max_devices_per_worker: int
    workers: list[WorkerView] = field(default_factory=list)
    devices_busy: int = 0

    @property
    def devices_total(self) -> int:
        return sum(w.devices for w in self.workers)

    @property
    def devices_free(self) -> int:
        return sum(w.devices for w in self.workers if not w.running_job)


def list_pools(session: Session, settings: Settings) -> list[PoolView]:
    """Every known pool with its live workers, the devices running jobs hold, and those of idle workers.

    A worker runs one job at a time: an idle worker's devices are free, a busy worker's job holds the devices it
    asked for (`devices_busy`); the rest of a busy worker's devices wait with it."""
    now = utcnow()
    pools = {name: PoolView(name, devices) for name, devices in known_pools(session, settings).items()}
    running = dict(
        session.execute(
            select(TrainingJob.worker, TrainingJob.gpus).where(TrainingJob.status == JobStatus.running)
        ).all()
    )
    for worker in alive_workers(session, settings, None, now):
        view = pools[worker.pool]
        busy = worker.name in running
        view.workers.append(WorkerView(worker.name, worker.devices, worker.device_kind, busy, worker.heartbeat_at))
        view.devices_busy += min(running.get(worker.name) or 0, worker.devices)
    return sorted(pools.values(), key=lambda p: p.name)
