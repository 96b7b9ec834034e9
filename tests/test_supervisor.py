"""`finetune up` keeps the service running: a worker killed with SIGKILL while it trains (what the out-of-memory
killer does) is restarted and its job completes, the API stays up (and comes back if it dies too), SIGTERM exits 0;
children that keep failing make the supervisor give up with status 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

import app.all_tables  # noqa: F401
from app import processes
from app.config import Settings
from app.db import utcnow
from app.jobs.reaper import reclaim_from_dead_worker
from app.jobs.tables import JobEvent, JobStatus, TrainingJob
from app.supervisor import Supervisor, describe_exit
from tests.conftest import wait_for_job, wait_for_step
from tests.factories import Sent, insert_job, text_csv, text_rows
from tests.stacks import private_stack, process_env

FAST_LEASES = {
    "FINETUNE_LEASE_SECONDS": "4",
    "FINETUNE_HEARTBEAT_SECONDS": "1",
    "FINETUNE_REAPER_INTERVAL_SECONDS": "1",
}
HP = {"epochs": 2, "batch_size": 8, "eval_every_steps": 10, "early_stopping": None, "seed": 11, "max_length": 16}


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid`: their command lines by pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # it exited while we looked
    return found


def child_running(pid: int, marker: str, other_than: int | None = None, timeout: float = 60) -> int:
    """The pid of the child of `pid` whose command line contains `marker` (a new one, if `other_than`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child, cmdline in children(pid).items():
            if marker in cmdline and child != other_than:
                return child
        time.sleep(0.2)
    raise TimeoutError(f"no {marker} child of {pid}")


def test_up_restarts_a_killed_worker_its_job_completes_and_the_api_stays_up(tmp_path, models_dir):
    var_dir = tmp_path / "var"
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = var_dir / "logs" / "up.log"
    with private_stack(redis_db=9) as stack:
        env = {**process_env(var_dir, models_dir, stack), **FAST_LEASES}
        up = processes.start(processes.cli_command("up", "--port", str(port)), env, log_path, new_session=True)
        try:
            processes.wait_ready(url, up, timeout=240)
            key = processes.create_key(env, "supervised")
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
                upload = {"file": ("big.csv", text_csv(text_rows(400, seed=5)))}
                dataset = client.post("/datasets", files=upload, data={"task": "text_classification"})
                assert dataset.status_code == 201, dataset.text
                submitted = client.post(
                    "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-bert", "hyperparameters": HP}
                )
                assert submitted.status_code == 201, submitted.text
                job_id = submitted.json()["id"]
                wait_for_step(client, job_id, 20)

                worker = child_running(up.pid, "celery")
                os.kill(worker, signal.SIGKILL)
                assert client.get("/healthz").status_code == 200  # the API is still up
                assert client.get(f"/jobs/{job_id}").status_code == 200
                restarted = child_running(up.pid, "celery", other_than=worker)
                assert restarted != worker

                job = wait_for_job(client, job_id, timeout=300)
                assert job["status"] == "succeeded", job["error"]
                assert job["attempt"] == 2
                events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
                died = [e for e in events if e["kind"] == "requeued"]
                assert len(died) == 1, events
                assert "signal 9" in died[0]["message"] and "restarted" in died[0]["message"], died[0]
                assert str(Path(var_dir)) not in died[0]["message"]

                api = child_running(up.pid, "uvicorn")
                os.kill(api, signal.SIGKILL)
                child_running(up.pid, "uvicorn", other_than=api)
                processes.wait_ready(url, up, path="/healthz", timeout=240)  # the API came back on its port
                assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"

            running = children(up.pid)
            assert len(running) == 2, running
            up.send_signal(signal.SIGTERM)
            assert up.wait(timeout=90) == 0
            assert not any(Path(f"/proc/{pid}").exists() for pid in running)  # both stopped, none left behind
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
            print(f"\n----- up.log (tail) -----\n{log_path.read_text(errors='replace')[-4000:]}")


def test_a_child_that_keeps_failing_is_restarted_with_backoff_then_the_supervisor_gives_up():
    starts: list[float] = []
    exits: list[tuple[str, int]] = []

    def start(command: list[str]) -> subprocess.Popen:
        starts.append(time.monotonic())
        return subprocess.Popen(command)

    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    steady = [sys.executable, "-c", "import time; time.sleep(120)"]
    supervisor = Supervisor(
        {"broken": failing, "steady": steady},
        on_exit=lambda name, proc: exits.append((name, proc.returncode)),
        start=start,
        backoff=0.3,
        max_failures=4,
        stable_seconds=30,
    )
    began = time.monotonic()
    assert supervisor.run() == 1
    assert time.monotonic() - began < 30
    assert exits == [("broken", 3)] * 4  # the steady child never exited on its own
    assert supervisor.children["steady"].proc is not None
    assert supervisor.children["steady"].proc.returncode is not None  # and it was stopped
    broken_starts = [starts[0]] + starts[2:]  # the first two starts are broken's and steady's
    gaps = [b - a for a, b in zip(broken_starts, broken_starts[1:], strict=False)]
    assert len(gaps) == 3
    for gap, backoff in zip(gaps, (0.3, 0.6, 1.2), strict=True):
        assert gap >= backoff, gaps


@pytest.mark.parametrize(
    ("returncode", "words"),
    [(-9, "signal 9: SIGKILL, as the out-of-memory killer sends"), (-15, "signal 15: SIGTERM"), (1, "status 1")],
)
def test_exits_are_described_for_the_job_event(returncode, words):
    assert words in describe_exit(returncode)


def test_the_jobs_a_dead_worker_held_are_reclaimed_at_once_with_an_event(db):
    settings = Settings(lease_seconds=60, heartbeat_seconds=10, max_restarts=2)
    now = utcnow()  # fresh heartbeats: the leases have not expired, the supervisor saw the process die
    held = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=now, worker="host:41")
    cancelling = insert_job(
        db, status=JobStatus.running, attempt=1, heartbeat_at=now, worker="host:41", cancel_requested=True
    )
    spent = insert_job(db, status=JobStatus.running, attempt=3, heartbeat_at=now, worker="host:41")
    elsewhere = insert_job(db, status=JobStatus.running, attempt=1, heartbeat_at=now, worker="host:42")

    sent = Sent()
    how = describe_exit(-9) + " and is being restarted"
    with db.session() as session:
        reclaimed = reclaim_from_dead_worker(session, settings, "host:41", how, sent)
    assert sorted(reclaimed) == sorted([held, cancelling, spent]) and sent == [held]
    with db.session() as session:
        statuses = {job_id: session.get(TrainingJob, job_id).status for job_id in (held, cancelling, spent, elsewhere)}
        events = {e.job_id: e for e in session.scalars(select(JobEvent).where(JobEvent.job_id.in_(reclaimed)))}
    assert statuses == {held: "queued", cancelling: "cancelled", spent: "failed", elsewhere: "running"}
    assert events[held].kind == "requeued"
    assert "worker host:41 died (signal 9: SIGKILL" in events[held].message
    assert "restarted" in events[held].message and "last checkpoint" in events[held].message
    assert "gave up after 2 restarts" in events[spent].message

    with db.session() as session:  # once reclaimed, nothing is left to reclaim
        assert reclaim_from_dead_worker(session, settings, "host:41", how, sent) == []
