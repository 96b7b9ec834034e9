"""The scheduling rule (app/jobs/scheduling.py) against real databases: fair share by weighted device-seconds,
priority then age within a team, caps, pools and device counts, queue positions, and claims that stay exactly-once
when many workers claim at once."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from sqlalchemy import select

import app.all_tables  # noqa: F401
from app.config import Settings
from app.db import Database, utcnow
from app.fleet.service import register_worker
from app.jobs import lifecycle, scheduling
from app.jobs.lifecycle import Event
from app.jobs.tables import DeviceUsage, JobEvent, JobStatus, TrainingJob
from app.teams.tables import Team

SETTINGS = Settings(lease_seconds=60, heartbeat_seconds=10)


def _team(db: Database, **values: object) -> str:
    with db.session() as session:
        team = Team(name=f"team-{uuid.uuid4().hex[:12]}", **values)
        session.add(team)
        session.flush()
        return team.id


def _queue(db: Database, team_id: str, n: int = 1, age_s: float = 0, **values: object) -> list[str]:
    """`n` queued jobs of the team, created `age_s` seconds ago and then one second apart (oldest first)."""
    ids = []
    with db.session() as session:
        for i in range(n):
            job = TrainingJob(
                team_id=team_id, dataset_id=None, task="text_classification", base_model="m", hyperparameters={},
                created_at=utcnow() - timedelta(seconds=age_s - i), **values,
            )  # fmt: skip
            session.add(job)
            session.flush()
            ids.append(job.id)
    return ids


def _used(db: Database, team_id: str, devices: int, seconds: float, ended_ago: float = 0) -> None:
    """A finished attempt of the team's that held `devices` for `seconds`, ending `ended_ago` seconds ago."""
    end = utcnow() - timedelta(seconds=ended_ago)
    with db.session() as session:
        session.add(DeviceUsage(team_id=team_id, job_id=None, attempt=1, devices=devices,
                                started_at=end - timedelta(seconds=seconds), ended_at=end))  # fmt: skip


def _claim(db: Database, pool: str = "default", devices: int = 1, worker: str = "w1", settings: Settings = SETTINGS):
    with db.session() as session:
        claimed = lifecycle.claim_next(session, settings, worker, pool, devices)
    return claimed.job_id if claimed else None


def _end(db: Database, job_id: str) -> None:
    with db.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        lifecycle.finish(session, job_id, job.attempt, Event.succeed, "done")


def test_the_team_that_used_less_goes_first_then_ties_go_to_the_older_job(db):
    heavy, light, idle = _team(db), _team(db), _team(db)
    _used(db, heavy, devices=1, seconds=600)
    _used(db, light, devices=1, seconds=60)
    heavy_jobs = _queue(db, heavy, 2, age_s=100)
    light_job = _queue(db, light, 1, age_s=50)[0]
    idle_job = _queue(db, idle, 1, age_s=10)[0]
    # idle has used nothing; light less than heavy; heavy's jobs, though the oldest, come last
    assert [_claim(db) for _ in range(4)] == [idle_job, light_job, *heavy_jobs]
    assert _claim(db) is None


def test_usage_is_device_seconds_in_the_window_and_divided_by_weight(db):
    one_gpu, four_gpus, old, weighty = _team(db), _team(db), _team(db), _team(db, weight=10.0)
    _used(db, one_gpu, devices=1, seconds=300)
    _used(db, four_gpus, devices=4, seconds=100)  # 400 device-seconds: more than one_gpu's 300
    _used(db, old, devices=8, seconds=3600, ended_ago=3 * 3600)  # outside a 2-hour window: forgotten
    _used(db, weighty, devices=1, seconds=2000)  # 2000 / 10 = 200: less than one_gpu's 300
    jobs = {team: _queue(db, team, 1)[0] for team in (four_gpus, one_gpu, weighty, old)}
    settings = Settings(lease_seconds=60, heartbeat_seconds=10, fair_share_window_seconds=2 * 3600)
    order = [_claim(db, settings=settings) for _ in range(4)]
    assert order == [jobs[old], jobs[weighty], jobs[one_gpu], jobs[four_gpus]]


def test_a_running_job_counts_up_to_now_and_its_attempt_is_recorded(db):
    busy, fresh = _team(db), _team(db)
    first = _queue(db, busy, 2, age_s=100)
    assert _claim(db, worker="w1") == first[0]  # both teams at zero: the oldest job
    late = _queue(db, fresh, 1)[0]
    assert _claim(db, worker="w2") == late  # busy holds a device now; fresh has used nothing
    with db.session() as session:
        usage = session.scalars(select(DeviceUsage).where(DeviceUsage.job_id == first[0])).one()
        assert usage.team_id == busy and usage.devices == 1 and usage.ended_at is None
    _end(db, first[0])
    with db.session() as session:
        assert session.scalars(select(DeviceUsage).where(DeviceUsage.job_id == first[0])).one().ended_at is not None


def test_within_a_team_priority_then_age(db):
    team = _team(db)
    low = _queue(db, team, 1, age_s=300, priority="low")[0]
    normal_old, normal_new = _queue(db, team, 2, age_s=200, priority="normal")
    high = _queue(db, team, 1, age_s=10, priority="high")[0]
    assert [_claim(db) for _ in range(4)] == [high, normal_old, normal_new, low]


def test_a_team_at_its_cap_waits_and_others_go_ahead(db):
    capped, other = _team(db, max_running_jobs=2), _team(db)
    mine = _queue(db, capped, 4, age_s=100)
    theirs = _queue(db, other, 2, age_s=10)
    claimed = [_claim(db, worker=f"w{i}") for i in range(5)]
    assert sorted(j for j in claimed if j in mine) == sorted(mine[:2])  # never more than 2 of the capped team
    assert sorted(j for j in claimed if j in theirs) == sorted(theirs)
    assert claimed[-1] is None
    _end(db, mine[0])
    assert _claim(db) == mine[2]  # one ended: the next may start
    assert _claim(db) is None


def test_the_service_wide_cap_applies_to_teams_without_their_own(db):
    team = _team(db)
    jobs = _queue(db, team, 3)
    settings = Settings(lease_seconds=60, heartbeat_seconds=10, team_max_running_jobs=1)
    assert _claim(db, settings=settings) == jobs[0]
    assert _claim(db, settings=settings) is None


def test_a_worker_claims_only_its_pools_jobs_that_fit_its_devices(db):
    team = _team(db)
    default_job = _queue(db, team, 1, age_s=100)[0]
    big = _queue(db, team, 1, age_s=90, pool="a100", gpus=4)[0]
    small = _queue(db, team, 1, age_s=80, pool="a100", gpus=1)[0]
    assert _claim(db, pool="a100", devices=2) == small  # the 4-device job does not fit 2 devices
    assert _claim(db, pool="a100", devices=2) is None
    assert _claim(db, pool="a100", devices=4) == big
    assert _claim(db, pool="default") == default_job


def test_cancelled_jobs_are_never_claimed(db):
    team = _team(db)
    first, second = _queue(db, team, 2, age_s=10)
    with db.session() as session:
        job = session.get(TrainingJob, first)
        assert job is not None
        lifecycle.request_cancel(session, job)
    assert _claim(db) == second
    assert _claim(db) is None


def _place(db: Database, job_id: str) -> scheduling.Place | None:
    with db.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return scheduling.place(session, SETTINGS, job)


def test_queue_position_and_what_a_job_waits_for(db):
    a, b = _team(db), _team(db, max_running_jobs=1)
    a_jobs = _queue(db, a, 3, age_s=100, pool="p1")
    b_jobs = _queue(db, b, 2, age_s=50, pool="p1")
    assert _place(db, a_jobs[0]) == scheduling.Place(
        1, "worker", "it asks for 1 device and no worker of pool 'p1' is alive; it starts when one can run it"
    )
    with db.session() as session:
        register_worker(session, "w-p1", "p1", 1, "cpu")
    place = _place(db, a_jobs[0])
    assert place is not None and (place.queue_position, place.waiting_for) == (1, "claim")
    # each pick charges its team one run: a, b, a, a and b's second waits for b's cap of one running job
    positions = {job: _place(db, job) for job in [*a_jobs, *b_jobs]}
    assert [positions[j].queue_position for j in [a_jobs[0], b_jobs[0], a_jobs[1], a_jobs[2], b_jobs[1]]] == [
        1, 2, 3, 4, 5,
    ]  # fmt: skip
    assert positions[a_jobs[1]].waiting_for == "turn" and "2 jobs of pool 'p1' start before it" in (
        positions[a_jobs[1]].detail
    )
    assert positions[b_jobs[1]].waiting_for == "cap"
    assert _claim(db, pool="p1", worker="w-p1") == a_jobs[0]
    place = _place(db, b_jobs[0])
    assert place is not None and (place.queue_position, place.waiting_for) == (1, "free_worker")
    assert _place(db, a_jobs[0]) is None  # running: no place in the queue


def test_many_workers_claiming_at_once_take_each_job_exactly_once(db):
    teams = [_team(db, max_running_jobs=3) for _ in range(3)]
    jobs = {job for team in teams for job in _queue(db, team, 5)}
    workers = 6 if db.engine.dialect.name == "postgresql" else 2
    claimed: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while True:
            job = _claim(db, worker=name)
            if job is None:
                return
            with lock:
                claimed.append(job)
            _end(db, job)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(claimed) == sorted(jobs)  # every job once, none twice
    with db.session() as session:
        claims = session.scalars(select(JobEvent.job_id).where(JobEvent.kind == "claimed")).all()
        statuses = set(session.scalars(select(TrainingJob.status).where(TrainingJob.id.in_(jobs))))
    assert sorted(claims) == sorted(jobs) and statuses == {JobStatus.succeeded}


def test_caps_hold_when_many_workers_claim_at_once(db):
    team = _team(db, max_running_jobs=2)
    _queue(db, team, 8)
    workers = 6 if db.engine.dialect.name == "postgresql" else 2
    barrier = threading.Barrier(workers)
    got: list[str | None] = []

    def claim_once(name: str) -> None:
        barrier.wait()
        got.append(_claim(db, worker=name))

    threads = [threading.Thread(target=claim_once, args=(f"w{i}",)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len([j for j in got if j is not None]) == 2
    with db.session() as session:
        running = session.scalars(select(TrainingJob.id).where(TrainingJob.status == JobStatus.running)).all()
    assert len(running) == 2
