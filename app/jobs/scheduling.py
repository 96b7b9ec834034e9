"""Which queued job a free worker runs next, decided from the database at claim time (never by message order).

The rule, for a worker of pool P holding D devices:

1. Candidates are the queued jobs of pool P that ask for at most D devices and are not being cancelled.
2. A team already running its cap of jobs (team.max_running_jobs, else FINETUNE_TEAM_MAX_RUNNING_JOBS; unset: no
   cap) waits, whatever its share.
3. Among the other teams, the one with the least weighted usage goes first: the device-seconds its jobs held over the
   last FINETUNE_FAIR_SHARE_WINDOW_SECONDS (GPUs x seconds; a CPU worker counts as one device, so worker-seconds),
   divided by its weight (team.weight, default 1: equal shares). Running jobs count up to now. Ties go to the team
   whose next job has waited longest.
4. Within a team: priority high, then normal, then low; then the oldest first.

`lifecycle.claim_next` applies it in the claiming worker's transaction and takes the first candidate it can lock.
`place` replays the rule over a whole pool for GET /jobs/{id} (queue_position, waiting_for), charging each pick the
average run of the window, as if nothing else changed: a position is an estimate, the claim is the decision.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import utcnow
from app.fleet.tables import FleetWorker
from app.jobs.tables import DeviceUsage, JobStatus, Priority, TrainingJob
from app.teams.tables import Team

PRIORITY_RANK = {Priority.high: 0, Priority.normal: 1, Priority.low: 2}
DEFAULT_RUN_S = 60.0  # what a pick is charged in `place` before any run has finished in the window


@dataclass(frozen=True)
class Queued:
    id: str
    team_id: str
    priority: str
    created_at: datetime
    gpus: int
    attempt: int


@dataclass(frozen=True)
class TeamShare:
    usage_s: float  # device-seconds held in the window
    weight: float
    running: int
    cap: int | None

    def at_cap(self, running: int) -> bool:
        return self.cap is not None and running >= self.cap


@dataclass(frozen=True)
class Placed:
    job: Queued
    capped: bool  # its team runs its cap of jobs: it waits for one of them to end


def order(queued: list[Queued], teams: dict[str, TeamShare], run_s: float) -> list[Placed]:
    """The jobs in the order the rule starts them if nothing else changed: each pick charges its team `run_s`
    device-seconds per device and one running job. Jobs of teams at their cap come last, marked `capped`."""
    lines: dict[str, deque[Queued]] = {}
    for job in sorted(queued, key=lambda j: (PRIORITY_RANK.get(Priority(j.priority), 1), j.created_at, j.id)):
        lines.setdefault(job.team_id, deque()).append(job)
    usage = {team: teams[team].usage_s for team in lines}
    running = {team: teams[team].running for team in lines}
    placed: list[Placed] = []
    while lines:
        open_ = [t for t in lines if not teams[t].at_cap(running[t])]
        if not open_:
            for team in sorted(lines, key=lambda t: (lines[t][0].created_at, t)):
                placed.extend(Placed(job, capped=True) for job in lines[team])
            break
        team = min(open_, key=lambda t: (usage[t] / teams[t].weight, lines[t][0].created_at, t))
        job = lines[team].popleft()
        placed.append(Placed(job, capped=False))
        usage[team] += run_s * job.gpus
        running[team] += 1
        if not lines[team]:
            del lines[team]
    return placed


# --- what the rule reads ------------------------------------------------------------------------------------------


def queued_in_pool(session: Session, pool: str, max_devices: int | None = None) -> list[Queued]:
    """The pool's queued jobs that are not being cancelled (at most `max_devices` devices each, if given)."""
    query = select(
        TrainingJob.id, TrainingJob.team_id, TrainingJob.priority, TrainingJob.created_at, TrainingJob.gpus,
        TrainingJob.attempt,
    ).where(
        TrainingJob.status == JobStatus.queued, TrainingJob.pool == pool, TrainingJob.cancel_requested.is_(False)
    )  # fmt: skip
    if max_devices is not None:
        query = query.where(TrainingJob.gpus <= max_devices)
    return [Queued(*row) for row in session.execute(query)]


def team_shares(session: Session, settings: Settings, team_ids: set[str], now: datetime) -> dict[str, TeamShare]:
    """Usage in the window, weight, running jobs and cap of each team."""
    if not team_ids:
        return {}
    usage = usage_by_team(session, settings, team_ids, now)
    running = dict(
        session.execute(
            select(TrainingJob.team_id, func.count())
            .where(TrainingJob.status == JobStatus.running, TrainingJob.team_id.in_(team_ids))
            .group_by(TrainingJob.team_id)
        ).all()
    )
    teams = session.execute(select(Team.id, Team.weight, Team.max_running_jobs).where(Team.id.in_(team_ids))).all()
    return {
        team_id: TeamShare(
            usage_s=usage.get(team_id, 0.0),
            weight=weight or 1.0,
            running=int(running.get(team_id, 0)),
            cap=cap or settings.team_max_running_jobs,
        )
        for team_id, weight, cap in teams
    }


def usage_by_team(session: Session, settings: Settings, team_ids: set[str], now: datetime) -> dict[str, float]:
    """Device-seconds each team's attempts held within the sliding window ending `now` (running ones up to now)."""
    since = now - timedelta(seconds=settings.fair_share_window_seconds)
    rows = session.execute(
        select(DeviceUsage.team_id, DeviceUsage.devices, DeviceUsage.started_at, DeviceUsage.ended_at).where(
            DeviceUsage.team_id.in_(team_ids), DeviceUsage.ended_at.is_(None) | (DeviceUsage.ended_at > since)
        )
    ).all()
    usage: dict[str, float] = {}
    for team_id, devices, started_at, ended_at in rows:
        held = (min(ended_at or now, now) - max(started_at, since)).total_seconds()
        usage[team_id] = usage.get(team_id, 0.0) + devices * max(held, 0.0)
    return usage


def average_run_s(session: Session, settings: Settings, now: datetime) -> float:
    """Mean device-seconds of the attempts that ended within the window (what `place` charges a pick)."""
    since = now - timedelta(seconds=settings.fair_share_window_seconds)
    rows = session.execute(
        select(DeviceUsage.devices, DeviceUsage.started_at, DeviceUsage.ended_at)
        .where(DeviceUsage.ended_at > since)
        .order_by(DeviceUsage.ended_at.desc())
        .limit(200)
    ).all()
    held = [devices * (ended - started).total_seconds() for devices, started, ended in rows if ended is not None]
    return sum(held) / len(held) if held else DEFAULT_RUN_S


def candidates(session: Session, settings: Settings, pool: str, devices: int) -> list[Queued]:
    """What a worker of `pool` with `devices` devices should try to claim, best first (capped teams left out)."""
    queued = queued_in_pool(session, pool, devices)
    shares = team_shares(session, settings, {job.team_id for job in queued}, utcnow())
    return [placed.job for placed in order(queued, shares, DEFAULT_RUN_S) if not placed.capped]


# --- where a queued job stands ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    queue_position: int  # 1: the next job of its pool to start
    waiting_for: str  # claim | free_worker | turn | cap | worker
    detail: str


def place(session: Session, settings: Settings, job: TrainingJob) -> Place | None:
    """Where a queued job stands in its pool and what it waits for; None when it is not queued."""
    if job.status != JobStatus.queued or job.cancel_requested:
        return None
    now = utcnow()
    queued = queued_in_pool(session, job.pool)
    shares = team_shares(session, settings, {q.team_id for q in queued}, now)
    placed = order(queued, shares, average_run_s(session, settings, now))
    index = next((i for i, p in enumerate(placed) if p.job.id == job.id), None)
    if index is None:  # claimed or cancelled since it was read
        return None
    position, capped = index + 1, placed[index].capped
    alive = alive_workers(session, settings, job.pool, now)
    able = [w for w in alive if w.devices >= job.gpus]
    if not able:
        seen = f"live workers of pool '{job.pool}' hold at most {max(w.devices for w in alive)} devices" if alive else (
            f"no worker of pool '{job.pool}' is alive"
        )  # fmt: skip
        asks = f"{job.gpus} device{'s' if job.gpus > 1 else ''}"
        return Place(position, "worker", f"it asks for {asks} and {seen}; it starts when one can run it")
    if capped:
        share = shares[job.team_id]
        return Place(position, "cap", f"your team runs {share.running} jobs, its cap; it starts when one ends")
    if position > 1:
        return Place(position, "turn", f"{position - 1} jobs of pool '{job.pool}' start before it (fair share "
                     "between teams, then priority and age)")  # fmt: skip
    busy = set(session.scalars(select(TrainingJob.worker).where(TrainingJob.status == JobStatus.running)))
    if all(w.name in busy for w in able):
        return Place(position, "free_worker", f"next in pool '{job.pool}'; every worker that can run it is busy")
    return Place(position, "claim", "next in its pool; a free worker is about to claim it")


def alive_workers(session: Session, settings: Settings, pool: str | None, now: datetime) -> list[FleetWorker]:
    """Workers whose heartbeat is within the lease (of `pool`, or all), not stopped."""
    query = select(FleetWorker).where(
        FleetWorker.stopped_at.is_(None),
        FleetWorker.heartbeat_at > now - timedelta(seconds=settings.lease_seconds),
    )
    if pool is not None:
        query = query.where(FleetWorker.pool == pool)
    return list(session.scalars(query.order_by(FleetWorker.name)))
