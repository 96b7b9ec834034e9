"""A fleet of real workers in pools, on the stack under test: fair share between teams with one worker, priorities
within a team, caps with two workers, jobs that run only in the pool they ask for, 422 for what no pool can run,
and GET /pools."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import httpx
import pytest

from app import processes
from app.processes import ROOT
from tests.conftest import Service, running_service, wait_for_job
from tests.factories import text_csv
from tests.stacks import private_stack

HP = {"epochs": 1, "batch_size": 8, "early_stopping": None, "max_steps": 2}
LONG = {"epochs": 6, "batch_size": 8, "early_stopping": None}
FAIR, CAPPED, X = "fair", "default", "x"  # pools: one worker; two workers; one worker


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models_dir):
    with (
        private_stack(redis_db=8) as stack,
        running_service(
            tmp_path_factory.mktemp("var-fleet"), models_dir, stack, workers=2, pools={"w-fair": FAIR, "w-x": X}
        ) as service,
    ):
        yield service


def _team(service: Service, name: str) -> tuple[httpx.Client, str]:
    """A client of a new team and its uploaded text dataset."""
    client = service.client(service.new_key(name))
    dataset = client.post("/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"})
    assert dataset.status_code == 201, dataset.text
    return client, dataset.json()["id"]


def _submit(
    client: httpx.Client, dataset: str, pool: str, priority: str = "normal", gpus: int = 1, hyperparameters: dict = HP
) -> dict:
    body = {"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": hyperparameters, "priority": priority,
            "resources": {"pool": pool, "gpus": gpus}}  # fmt: skip
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _started(job: dict) -> datetime:
    return datetime.fromisoformat(job["started_at"])


def _claimed_by(client: httpx.Client, job_id: str) -> list[str]:
    events = client.get(f"/jobs/{job_id}/events").json()["items"]
    return [e["message"].split(" ")[2] for e in events if e["kind"] == "claimed"]


def _wait_workers(client: httpx.Client, pools: dict[str, int], timeout: float = 180) -> list[dict]:
    """GET /pools until each named pool has that many live workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get("/pools").json()
        alive = {p["name"]: len(p["workers"]) for p in answer}
        if all(alive.get(pool, 0) >= n for pool, n in pools.items()):
            return answer
        time.sleep(0.5)
    raise TimeoutError(f"pools not alive: {answer}")


def test_a_second_team_is_not_stuck_behind_the_first_ones_queue(fleet):
    a, a_data = _team(fleet, "fair-a")
    b, b_data = _team(fleet, "fair-b")
    _wait_workers(a, {FAIR: 1})
    a_ids = [_submit(a, a_data, FAIR)["id"] for _ in range(8)]
    b_id = _submit(b, b_data, FAIR)["id"]
    queued_b = b.get(f"/jobs/{b_id}").json()
    if queued_b["status"] == "queued":  # where it stands, as the team sees it
        assert queued_b["queue_position"] >= 1 and queued_b["waiting_for"] in {"claim", "free_worker", "turn"}
    a_jobs = [wait_for_job(a, job_id, timeout=600) for job_id in a_ids]
    b_job = wait_for_job(b, b_id, timeout=600)
    assert {j["status"] for j in [*a_jobs, b_job]} == {"succeeded"}
    assert [j["queue_position"] for j in a_jobs] == [None] * 8
    # one worker runs them one at a time: B's job starts before A's second-to-last at the latest
    assert _started(b_job) < _started(a_jobs[-2]), [(j["id"], j["started_at"]) for j in a_jobs]
    assert sorted(a_jobs, key=_started) == a_jobs  # A's own jobs in the order A submitted them


def test_priorities_order_a_teams_own_jobs(fleet):
    client, data = _team(fleet, "prio")
    _wait_workers(client, {FAIR: 1})
    first = _submit(client, data, FAIR, hyperparameters=LONG)["id"]  # keeps the worker busy while the others queue
    wait_for_job(client, first, {"running"})
    low = _submit(client, data, FAIR, "low")["id"]
    normal = _submit(client, data, FAIR, "normal")["id"]
    high = _submit(client, data, FAIR, "high")["id"]
    assert client.get(f"/jobs/{first}").json()["status"] == "running", "the first job ended before the others queued"
    queued = client.get(f"/jobs/{low}").json()
    assert (queued["queue_position"], queued["waiting_for"]) == (3, "turn"), queued
    jobs = {name: wait_for_job(client, job_id, timeout=300) for name, job_id in
            {"first": first, "low": low, "normal": normal, "high": high}.items()}  # fmt: skip
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    later = sorted(["low", "normal", "high"], key=lambda name: _started(jobs[name]))
    assert later == ["high", "normal", "low"], {name: j["started_at"] for name, j in jobs.items()}
    assert jobs["high"]["priority"] == "high"


def _set_limits(service: Service, team: str, *options: str) -> None:
    subprocess.run(
        processes.cli_command("teams", "limits", "--team", team, *options),
        env=service.env, cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip


def test_a_teams_cap_holds_on_two_workers_while_another_team_runs(fleet):
    capped, capped_data = _team(fleet, "capped")
    other, other_data = _team(fleet, "uncapped")
    _set_limits(fleet, "capped", "--max-running-jobs", "1")
    _wait_workers(capped, {CAPPED: 2})
    capped_ids = [_submit(capped, capped_data, CAPPED)["id"] for _ in range(3)]
    waiting = capped.get(f"/jobs/{capped_ids[-1]}").json()
    if waiting["status"] == "queued":
        assert waiting["waiting_for"] in {"cap", "turn"}, waiting
    other_id = _submit(other, other_data, CAPPED)["id"]
    capped_jobs = [wait_for_job(capped, job_id, timeout=300) for job_id in capped_ids]
    other_job = wait_for_job(other, other_id, timeout=300)
    assert {j["status"] for j in [*capped_jobs, other_job]} == {"succeeded"}
    spans = sorted((_started(j), datetime.fromisoformat(j["finished_at"])) for j in capped_jobs)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    # the second worker did not sit idle behind the cap: the other team's job ran beside a capped one
    assert _started(other_job) < spans[-1][1]


def test_a_job_runs_only_in_its_pool_and_pools_show_what_is_alive(fleet):
    client, data = _team(fleet, "pools")
    pools = {p["name"]: p for p in _wait_workers(client, {X: 1, FAIR: 1, CAPPED: 2})}
    x_workers = {w["name"] for w in pools[X]["workers"]}
    assert len(x_workers) == 1 and pools[X]["devices_total"] == 1 and pools[X]["max_devices_per_worker"] == 1
    assert pools[CAPPED]["devices_total"] == 2
    assert pools[X]["devices_free"] + pools[X]["devices_busy"] == 1
    jobs = [_submit(client, data, X)["id"] for _ in range(2)]
    for job_id in jobs:
        assert wait_for_job(client, job_id, timeout=300)["status"] == "succeeded"
        assert set(_claimed_by(client, job_id)) <= x_workers and _claimed_by(client, job_id)
    default_job = _submit(client, data, CAPPED)["id"]
    wait_for_job(client, default_job, timeout=300)
    assert not set(_claimed_by(client, default_job)) & x_workers


def test_a_request_no_pool_can_run_is_a_422_naming_the_pools(fleet):
    client, data = _team(fleet, "impossible")
    _wait_workers(client, {X: 1})
    for resources, says in [({"pool": "h100"}, "No pool 'h100'"), ({"pool": X, "gpus": 2}, "at most 1")]:
        body = {"dataset_id": data, "base_model": "tiny-bert", "hyperparameters": HP, "resources": resources}
        answer = client.post("/jobs", json=body)
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert says in detail and "x (up to 1 per worker)" in detail and "default (up to 1 per worker)" in detail
    assert client.get("/jobs", params={"status": "queued"}).json()["items"] == []


def test_a_batch_prediction_runs_in_the_pool_its_model_was_trained_in(fleet):
    """A fleet may have no default pool: a model's batch predictions (and checkpoint reports) go to its job's pool."""
    client, data = _team(fleet, "batch-pool")
    _wait_workers(client, {X: 1})
    job = wait_for_job(client, _submit(client, data, X)["id"], timeout=300)
    assert job["status"] == "succeeded", job["error"]
    created = client.post("/predictions", json={"model": job["model_id"], "dataset_id": data})
    assert created.status_code == 202, created.text
    deadline = time.monotonic() + 180
    while (run := client.get(f"/predictions/{created.json()['id']}").json())["status"] in {"queued", "running"}:
        assert time.monotonic() < deadline, run
        time.sleep(0.3)
    assert run["status"] == "succeeded", run["error"]
    logs = {name: (fleet.var_dir / "logs" / f"{name}.log").read_text() for name in fleet.processes if name != "api"}
    received = [name for name, text in logs.items() if "Task finetune.batch_predict[" in text]
    assert received == ["w-x"], received
