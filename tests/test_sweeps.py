"""Sweeps on the real service with two workers: trials are jobs, the pruner stops the hopeless ones, the study is
told each end once (even across a SIGKILLed worker), cancel stops everything, and a seed replays the proposals."""

from __future__ import annotations

import signal
import time
from datetime import datetime

import pytest
from optuna.trial import TrialState

from app.sweeps import study
from tests.conftest import running_service, wait_for_job, wait_for_step
from tests.factories import text_csv, text_rows
from tests.stacks import private_stack

FAST_LEASES = {
    "FINETUNE_LEASE_SECONDS": "4",
    "FINETUNE_HEARTBEAT_SECONDS": "1",
    "FINETUNE_REAPER_INTERVAL_SECONDS": "1",
}
# 200 reviews: 160 to train on, 10 steps an epoch at batch 16
FIXED = {"epochs": 10, "batch_size": 16, "eval_every_steps": 10, "max_length": 16}
SWEEP_END = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, models_dir):
    """A service of its own with two workers (fast leases), a team and a 200-review dataset."""
    with (
        private_stack(redis_db=11) as stack,
        running_service(
            tmp_path_factory.mktemp("var-sweeps"), models_dir, stack, workers=2, settings=FAST_LEASES
        ) as service,
        service.client(service.new_key("sweep-team")) as client,
    ):
        upload = {"file": ("reviews.csv", text_csv(text_rows(100, seed=3)))}
        dataset = client.post("/datasets", files=upload, data={"task": "text_classification"})
        assert dataset.status_code == 201, dataset.text
        yield service, client, dataset.json()["id"]


def _sweep(client, dataset_id: str, **fields) -> dict:
    body = {"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": FIXED, **fields}
    answer = client.post("/sweeps", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _wait(client, sweep_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        if sweep["status"] in SWEEP_END:
            return sweep
        time.sleep(0.5)
    raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout}s: {sweep}")


def _trials(client, sweep_id: str) -> list[dict]:
    return client.get(f"/sweeps/{sweep_id}/trials").json()


def _study_trials(service, sweep_id: str) -> list:
    return study.load_study(service.settings, f"sweep-{sweep_id}").get_trials(deepcopy=False)


def _events(client, job_id: str) -> list[dict]:
    return client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]


def test_six_trials_two_at_a_time_prune_the_hopeless_and_find_the_best(sweeps):
    service, client, dataset_id = sweeps
    sweep = _sweep(
        client, dataset_id,
        # 1e-6 learns nothing in 100 steps (val accuracy 0.5); 3e-3 and 1e-2 reach 1.0 by step 60, the warm-up.
        # Seed 4 shuffles the grid to three good trials first: both 1e-6 trials start once good ones completed.
        search_space={"learning_rate": {"type": "choice", "values": [1e-6, 3e-3, 1e-2]},
                      "seed": {"type": "choice", "values": [1, 2]}},
        sampler="grid", max_trials=6, parallelism=2, pruner={"type": "median", "warmup_steps": 60}, seed=4,
    )  # fmt: skip
    assert sweep["status"] == "running" and sweep["trials_started"] == 2
    done = _wait(client, sweep["id"])
    assert done["status"] == "succeeded", done
    trials = _trials(client, sweep["id"])
    assert [t["number"] for t in trials] == list(range(6)) and done["trials_started"] == 6
    assert len({t["job_id"] for t in trials}) == 6
    assert sorted((t["hyperparameters"]["learning_rate"], t["hyperparameters"]["seed"]) for t in trials) == sorted(
        (lr, s) for lr in (1e-6, 3e-3, 1e-2) for s in (1, 2)
    )  # the grid, each point once
    states = {t["status"] for t in trials}
    assert states <= {"succeeded", "pruned"}, trials
    pruned = [t for t in trials if t["status"] == "pruned"]
    assert [t["hyperparameters"]["learning_rate"] for t in pruned] == [1e-6, 1e-6], trials
    assert done["counts"] == {s: sum(t["status"] == s for t in trials) for s in states}
    for trial in pruned:
        assert trial["told"] == "pruned"
        event = next(e for e in _events(client, trial["job_id"]) if e["kind"] == "pruned")
        assert f"pruned at step {trial['steps']} by the median pruner" in event["message"]
        assert trial["model_id"] is None and trial["steps"] == 60

    completed = [t for t in trials if t["told"] == "complete"]
    best = max(completed, key=lambda t: (t["objective"], -t["number"]))
    assert done["best_trial"]["number"] == best["number"]
    assert done["best_trial"]["objective"] == best["objective"] == 1.0
    assert done["best_trial"]["hyperparameters"] == best["hyperparameters"]
    assert done["best_trial"]["model_id"] == best["model_id"] is not None
    assert done["budget_used"]["steps"] == sum(t["steps"] for t in trials)

    # Never more than `parallelism` trials queued or running at once.
    spans = [client.get(f"/jobs/{t['job_id']}").json() for t in trials]
    moments = [datetime.fromisoformat(j["created_at"]) for j in spans]
    for moment in moments:
        alive = [
            j for j in spans
            if datetime.fromisoformat(j["created_at"]) <= moment < datetime.fromisoformat(j["finished_at"])
        ]  # fmt: skip
        assert len(alive) <= 2, [j["id"] for j in alive]

    # The study holds the same six trials, each told once, with the same outcome.
    told = {t.number: t for t in _study_trials(service, sweep["id"])}
    assert sorted(told) == list(range(6))
    for trial in trials:
        expected = TrialState.PRUNED if trial["told"] == "pruned" else TrialState.COMPLETE
        assert told[trial["number"]].state == expected
        if expected == TrialState.COMPLETE:
            assert told[trial["number"]].value == trial["objective"]

    # Importances need completed trials whose scores differ; tiny models often all score 1.0, nothing to attribute.
    importances = client.get(f"/sweeps/{sweep['id']}/importances")
    scores = {t["objective"] for t in completed}
    if len(scores) == 1:
        assert importances.status_code == 409, importances.text
        assert f"all {len(completed)} completed trials scored {scores.pop()}" in importances.json()["detail"]
    else:
        assert importances.status_code == 200, importances.text
        answer = importances.json()
        assert answer["completed_trials"] == len(completed)
        assert answer["importances"] and set(answer["importances"]) <= {"learning_rate", "seed"}
        assert sum(answer["importances"].values()) == pytest.approx(1.0)


def test_cancel_stops_queued_and_running_trials_and_starts_no_more(sweeps):
    service, client, dataset_id = sweeps
    sweep = _sweep(
        client, dataset_id, hyperparameters={**FIXED, "epochs": 100, "eval_every_steps": 100, "early_stopping": None},
        search_space={"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
        sampler="random", max_trials=8, parallelism=2, pruner="none",
    )  # fmt: skip
    first = _trials(client, sweep["id"])[0]
    wait_for_step(client, first["job_id"], 3)
    cancelled = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    for trial in _trials(client, sweep["id"]):
        assert wait_for_job(client, trial["job_id"], timeout=60)["status"] == "cancelled"
    time.sleep(3)  # a few reaper rounds: none may start a trial
    after = client.get(f"/sweeps/{sweep['id']}").json()
    assert after["trials_started"] == 2 and after["counts"] == {"cancelled": 2}
    assert [t["told"] for t in _trials(client, sweep["id"])] == ["fail", "fail"]
    assert {t.state for t in _study_trials(service, sweep["id"])} == {TrialState.FAIL}
    assert client.post(f"/sweeps/{sweep['id']}/cancel").json()["status"] == "cancelled"  # again: no change


def test_a_sigkilled_worker_mid_trial_resumes_the_same_trial(sweeps):
    service, client, dataset_id = sweeps
    sweep = _sweep(
        client, dataset_id, hyperparameters={**FIXED, "epochs": 30, "eval_every_steps": 20, "early_stopping": None},
        search_space={"learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 1e-2}},
        sampler="random", max_trials=2, parallelism=1, pruner="none",
    )  # fmt: skip
    job_id = _trials(client, sweep["id"])[0]["job_id"]
    wait_for_step(client, job_id, 50)  # past two evaluations (and their checkpoints)
    claimed = next(e for e in _events(client, job_id) if e["kind"] == "claimed")
    pid = int(claimed["message"].split()[2].rsplit(":", 1)[1])
    name = next(n for n, p in service.processes.items() if p.pid == pid)
    service.processes[name].send_signal(signal.SIGKILL)
    service.processes[name].wait()
    service.start_worker(f"{name}-again")

    done = _wait(client, sweep["id"])
    assert done["status"] == "succeeded", done
    trials = _trials(client, sweep["id"])
    assert [t["number"] for t in trials] == [0, 1] and done["trials_started"] == 2
    assert [t["status"] for t in trials] == ["succeeded", "succeeded"]
    resumed = client.get(f"/jobs/{job_id}").json()
    assert resumed["attempt"] == 2
    kinds = [e["kind"] for e in _events(client, job_id)]
    assert "requeued" in kinds and "resumed" in kinds and kinds.count("sweep_trial") == 1
    told = _study_trials(service, sweep["id"])
    assert [(t.number, t.state) for t in told] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]
    assert [t.value for t in told] == [t["objective"] for t in trials]
    assert sorted(told[0].intermediate_values) == list(range(20, 301, 20))  # every evaluation, once


def test_the_same_spec_and_seed_proposes_the_same_trials(sweeps):
    service, client, dataset_id = sweeps
    spec = {
        "hyperparameters": {**FIXED, "max_steps": 4, "eval_every_steps": 2},  # proposals, not models, matter here
        "search_space": {
            "learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-2},
            "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
            "warmup_ratio": {"type": "choice", "values": [0.0, 0.1, 0.2]},
        },
        "objective": {"metric": "val_loss"}, "max_trials": 4, "parallelism": 1, "pruner": "none", "seed": 7,
    }  # fmt: skip
    first, second = _sweep(client, dataset_id, **spec), _sweep(client, dataset_id, **spec)
    assert client.get(f"/sweeps/{first['id']}/importances").status_code == 409  # too few trials completed yet
    proposals = []
    for sweep in (first, second):
        assert _wait(client, sweep["id"])["status"] == "succeeded"
        proposals.append([t["hyperparameters"] for t in _trials(client, sweep["id"])])
    assert proposals[0] == proposals[1]
    assert len({p["learning_rate"] for p in proposals[0]}) == 4  # each trial a new proposal
    importances = client.get(f"/sweeps/{first['id']}/importances")
    assert importances.status_code == 200, importances.text
    assert importances.json()["completed_trials"] == 4
    assert set(importances.json()["importances"]) == {"learning_rate", "weight_decay", "warmup_ratio"}
    assert abs(sum(importances.json()["importances"].values()) - 1) < 1e-6


def test_invalid_spaces_are_422s_naming_the_field(sweeps):
    _, client, dataset_id = sweeps
    lr = {"type": "log_uniform", "low": 1e-5, "high": 1e-3}
    cases = [
        ({"search_space": {"learning_rat": lr}}, "search_space.learning_rat"),
        ({"search_space": {"learning_rate": {**lr, "low": 1e-2}}}, "search_space.learning_rate.high"),
        ({"search_space": {"learning_rate": {**lr, "low": 0}}}, "search_space.learning_rate.low"),
        ({"search_space": {"batch_size": {"type": "int", "low": 0, "high": 8}}}, "search_space.batch_size.low"),
        ({"search_space": {"batch_size": {"type": "choice", "values": [8, 0]}}}, "search_space.batch_size.values[1]"),
        ({"search_space": {"early_stopping": {"type": "choice", "values": [None]}}}, "search_space.early_stopping"),
        ({"search_space": {"batch_size": {"type": "choice", "values": [8]}}, "hyperparameters": {"batch_size": 4}},
         "also fixed"),
        ({"search_space": {"seed": {"type": "int", "low": 1, "high": 5}}, "sampler": "grid", "max_trials": 4},
         "the grid has 5 points, more than max_trials (4)"),
        ({"search_space": {"learning_rate": lr}, "sampler": "grid"}, "the grid sampler needs choice or int"),
        ({"search_space": {"learning_rate": lr}, "parallelism": 3, "max_trials": 2}, "parallelism"),
    ]  # fmt: skip
    for fields, named in cases:
        body = {"dataset_id": dataset_id, "base_model": "tiny-bert", **fields}
        answer = client.post("/sweeps", json=body)
        assert answer.status_code == 422, (fields, answer.text)
        assert named in answer.json()["detail"], (named, answer.json()["detail"])
    schema = client.post("/sweeps", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "search_space": {
        "learning_rate": {"type": "cubic", "low": 1, "high": 2}}})  # fmt: skip
    assert schema.status_code == 422 and "search_space.learning_rate.type" in schema.json()["detail"]


def test_another_teams_sweep_is_a_404(sweeps):
    service, client, dataset_id = sweeps
    sweep = client.get("/sweeps").json()["items"][0]
    with service.client(service.new_key("other-sweep-team")) as other:
        for answer in (
            other.get(f"/sweeps/{sweep['id']}"),
            other.get(f"/sweeps/{sweep['id']}/trials"),
            other.get(f"/sweeps/{sweep['id']}/importances"),
            other.post(f"/sweeps/{sweep['id']}/cancel"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"] == f"No sweep '{sweep['id']}'. List yours with GET /sweeps."
        assert other.get("/sweeps").json()["items"] == []
        space = {"learning_rate": {"type": "log_uniform", "low": 1e-5, "high": 1e-3}}
        stolen = other.post(
            "/sweeps", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "search_space": space}
        )
        assert stolen.status_code == 404 and "No dataset" in stolen.json()["detail"]
