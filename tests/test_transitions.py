"""The job state machine against real databases: every (status, event) pair does what the table in
app/jobs/lifecycle.py says and nothing else, and no other module writes a job's status."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import app.all_tables  # noqa: F401
from app.config import Settings
from app.db import Database, utcnow
from app.errors import Conflict
from app.jobs import lifecycle
from app.jobs.lifecycle import TRANSITIONS, Event, Sending
from app.jobs.stop_reasons import LostLease
from app.jobs.tables import JobEvent, JobStatus, TrainingJob
from tests.factories import Sent, insert_job

ROOT = Path(__file__).resolve().parent.parent
STATE_MODULE = ROOT / "app" / "jobs" / "lifecycle.py"
SETTINGS = Settings(lease_seconds=60, heartbeat_seconds=10, max_restarts=2)


def _job(db: Database, job_id: str) -> TrainingJob:
    with db.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        return job


def _apply(db: Database, event: Event, job_id: str) -> None:
    """Try `event` on the job the way its caller does; refusals raise (Conflict, LostLease) or change nothing."""
    with db.session() as session:
        job = session.get(TrainingJob, job_id)
        assert job is not None
        if event == Event.cancel:
            lifecycle.request_cancel(session, job)
        elif event == Event.claim:
            lifecycle.claim(session, job_id, "w-test")
        elif event in lifecycle.FINISH_EVENT_KIND:
            lifecycle.finish(session, job_id, 1, event, "test")
        elif event == Event.hand_back:
            lifecycle.hand_back(session, job_id, 1, "test")
        else:
            lifecycle.reclaim_lost(session, job, SETTINGS, utcnow())


def _setup_for(event: Event) -> dict:
    """Columns that let `event` happen when the status allows it (an expired lease, a cancel flag, spent restarts)."""
    values: dict = {"attempt": 1, "worker": "w1", "heartbeat_at": utcnow() - timedelta(hours=1)}
    if event == Event.lost_cancelled:
        values["cancel_requested"] = True
    if event == Event.lost_for_good:
        values["attempt"] = SETTINGS.max_restarts + 1
    return values


@pytest.mark.parametrize("event", [e for e in Event if e != Event.submit])
def test_every_status_and_event_follows_the_table(db, event):
    moves = TRANSITIONS[event]
    for status in JobStatus:
        setup = _setup_for(event)
        if event in lifecycle.FINISH_EVENT_KIND or event == Event.hand_back:
            setup["attempt"] = 1
        job_id = insert_job(db, status=status, **setup)
        try:
            _apply(db, event, job_id)
        except (Conflict, LostLease):
            pass
        expected = moves.target if moves.source == status else status
        assert _job(db, job_id).status == expected, f"{event} on a {status} job"


def test_illegal_transitions_are_refused_with_a_reason(db):
    succeeded = insert_job(db, status=JobStatus.succeeded)
    with pytest.raises(Conflict, match="already succeeded"), db.session() as session:
        lifecycle.request_cancel(session, _job(db, succeeded))

    running = insert_job(db, status=JobStatus.running, attempt=2, heartbeat_at=utcnow())
    with db.session() as session:
        assert lifecycle.claim(session, running, "w2") is None
    for stale in (1, 3):
        for event in (Event.succeed, Event.fail, Event.stop_cancelled):
            with pytest.raises(LostLease), db.session() as session:
                lifecycle.finish(session, running, stale, event, "stale")
        with pytest.raises(LostLease), db.session() as session:
            lifecycle.hand_back(session, running, stale, "stale")
    with pytest.raises(ValueError), db.session() as session:
        lifecycle.finish(session, running, 2, Event.claim, "not a final state")
    assert _job(db, running).status == JobStatus.running

    fresh_lease = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=utcnow())
    with db.session() as session:
        assert lifecycle.reclaim_lost(session, _job(db, fresh_lease), SETTINGS, utcnow()) is None
    assert _job(db, fresh_lease).status == JobStatus.running


def test_a_cancelled_queued_job_is_never_claimed_and_a_running_one_is_flagged(db):
    queued = insert_job(db, status=JobStatus.queued)
    running = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=utcnow())
    for job_id in (queued, running):
        with db.session() as session:
            lifecycle.request_cancel(session, session.get(TrainingJob, job_id))
    assert _job(db, queued).status == JobStatus.cancelled and _job(db, queued).finished_at is not None
    with db.session() as session:
        assert lifecycle.claim(session, queued, "w") is None
    flagged = _job(db, running)
    assert flagged.status == JobStatus.running and flagged.cancel_requested
    with db.session() as session:
        assert lifecycle.heartbeat(session, running, 1) is True


def test_dispatch_is_the_one_send_path_and_survives_a_broker_outage(db):
    job_id = insert_job(db, status=JobStatus.queued, enqueued_at=None)
    sent = Sent()

    def broker_down(*_: str) -> None:
        raise ConnectionError("redis is down")

    with db.session() as session:
        assert lifecycle.dispatch(session, job_id, broker_down) == Sending.broker_down
    assert _job(db, job_id).enqueued_at is None  # the next reaper round sends it
    with db.session() as session:
        kinds = list(session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)))
    assert kinds == ["enqueue_failed"]

    with db.session() as session:
        assert lifecycle.dispatch(session, job_id, sent) == Sending.sent
        assert lifecycle.dispatch(session, job_id, sent) == Sending.skipped  # sent recently
        later = utcnow() + timedelta(seconds=1)
        assert lifecycle.dispatch(session, job_id, sent, resend_before=later) == Sending.sent
    assert sent == [job_id, job_id] and _job(db, job_id).enqueued_at is not None

    done = insert_job(db, status=JobStatus.cancelled, enqueued_at=None)
    with db.session() as session:
        assert lifecycle.dispatch(session, done, sent) == Sending.skipped
    assert sent == [job_id, job_id]


def _mentions_job_status(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "JobStatus" for n in ast.walk(node))


def _updated_table(call: ast.Call) -> str | None:
    """The name X of the `update(X)` a `.values(...)` chain starts from (None when it is not such a chain): another
    table's `status` (a sweep's) is not a job's."""
    node: ast.AST = call.func
    while isinstance(node, ast.Attribute | ast.Call):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "update" and node.args:
            return getattr(node.args[0], "id", None)
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return None


def _writes_status(tree: ast.AST) -> list[int]:
    """Lines that set a job's status: `job.status = ...`, `status=` passed to `.values(...)`, `update(...)` or a
    `TrainingJob(...)` constructor, or a `{"status": JobStatus...}` dict (for `.values(**d)`)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                owner = getattr(t, "value", None)
                if isinstance(t, ast.Attribute) and t.attr == "status" and getattr(owner, "id", None) != "self":
                    lines.append(node.lineno)
        if isinstance(node, ast.Call) and any(k.arg == "status" for k in node.keywords):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"values", "update", "TrainingJob"} and _updated_table(node) in (None, "TrainingJob"):
                lines.append(node.lineno)
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "status" and _mentions_job_status(v):
                    lines.append(node.lineno)
    return lines


def test_only_the_state_module_writes_a_jobs_status():
    offenders = {}
    for path in sorted([*(ROOT / "app").rglob("*.py"), *(ROOT / "worker").rglob("*.py")]):
        if path == STATE_MODULE:
            continue
        lines = _writes_status(ast.parse(path.read_text()))
        if lines:
            offenders[str(path.relative_to(ROOT))] = lines
    assert offenders == {}
    assert _writes_status(ast.parse(STATE_MODULE.read_text())), "the scan must see the state module's own writes"


def test_the_docstring_table_is_the_transition_table():
    documented = set()
    for line in (lifecycle.__doc__ or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] in Event.__members__:
            documented.add(tuple(parts[:4]))
    table = {
        ("(new)" if t.source is None else t.source.value, event.value, t.target.value, t.who)
        for event, t in TRANSITIONS.items()
    }
    assert table <= documented
    assert documented - table == {("running", "cancel", "running", "API")}  # a flag, not a change of status
