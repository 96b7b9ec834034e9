"""Sweeps through the Python client and the CLI against the real service (one worker, tiny-bert, a few steps a
trial): create, wait, list, get, trials, importances, cancel; `finetune sweeps ...` tables, --json and exit codes;
a steps budget that stops new trials, and promote_alias moving the alias to the best trial's model."""

from __future__ import annotations

import json

import pytest

from finetune_client import Client, Conflict, NotFound, Sweep, Trial, WaitTimeout
from tests.test_cli import as_json, finetune

# 60 reviews: 48 to train on; every trial takes exactly max_steps steps (no early stopping)
FIXED = {"epochs": 10, "batch_size": 8, "max_length": 16, "eval_every_steps": 6, "early_stopping": None}
GOOD_RATES = {"learning_rate": {"type": "choice", "values": [5e-3, 1e-2]}}


@pytest.fixture(scope="module")
def sdk(service, key):
    with Client(service.url, key) as client:
        yield client


@pytest.fixture(scope="module")
def budgeted(sdk, text_dataset):
    """A 3-trial sweep, one at a time, 40 steps a trial, with a 60-step budget and promote_alias, waited for
    through the client, with what its progress callback saw."""
    seen: list[Sweep] = []
    created = sdk.sweeps.create(
        text_dataset, "tiny-bert", GOOD_RATES, {**FIXED, "max_steps": 40, "eval_every_steps": 10}, max_trials=3, parallelism=1,
        sampler="random", pruner="none", budget={"steps": 60}, seed=1, promote_alias="sweep-best",
    )  # fmt: skip
    done = sdk.sweeps.wait(created.id, timeout=300, on_progress=seen.append, poll_interval=0.5)
    return created, done, seen


def test_a_steps_budget_stops_new_trials_and_the_alias_moves_to_the_best_model(sdk, budgeted):
    created, done, seen = budgeted
    assert isinstance(created, Sweep) and created.status == "running" and created.trials_started == 1
    assert created.spec["budget"] == {"steps": 60, "seconds": None} and created.spec["objective"]["metric"] == (
        "val_accuracy"
    )
    trials = sdk.sweeps.trials(done.id)
    assert all(isinstance(t, Trial) for t in trials)
    # Trial 0 took 40 of the 60 steps, so trial 1 started; after it 80 >= 60 and trial 2 never started.
    assert done.status == "succeeded" and done.trials_started == 2 and [t.number for t in trials] == [0, 1]
    assert [(t.status, t.told, t.steps) for t in trials] == [("succeeded", "complete", 40)] * 2
    assert done.counts == {"succeeded": 2}
    assert (done.budget_used.steps, done.budget_used.steps_limit) == (80, 60)
    assert done.budget_used.seconds_limit is None and done.budget_used.seconds > 0

    best = max(trials, key=lambda t: (t.objective, -t.number))
    assert done.best_trial is not None and done.best_trial.number == best.number
    assert (done.best_trial.objective, done.best_trial.hyperparameters) == (best.objective, best.hyperparameters)
    model = sdk.models.get(best.model_id)
    # The rule (app/sweeps/progress.py _promote): the alias moves to the best trial's model unless that model is
    # flagged below_baseline. These trials learn the give-away words (lr 5e-3 or 1e-2, 40 steps), so it moves.
    assert not model.below_baseline, (model.metrics, [(t.hyperparameters, t.objective) for t in trials])
    assert done.promoted_model_id == best.model_id == done.best_trial.model_id
    assert done.stop_reason == (
        f"the step budget (60) is spent; alias 'sweep-best' now serves trial {best.number}'s model"
    )
    assert {a.name: a.model_id for a in sdk.aliases.list()}["sweep-best"] == best.model_id

    # The callback saw each change once, in order, ending with the finished sweep.
    assert seen[-1].status == "succeeded" and all(s.status == "running" for s in seen[:-1])
    assert [s.budget_used.steps for s in seen] == sorted(s.budget_used.steps for s in seen)
    assert len({(s.status, tuple(sorted(s.counts.items())), s.budget_used.steps) for s in seen}) == len(seen)


def test_list_get_importances_and_cancel_of_an_ended_sweep(sdk, budgeted, other_key, service):
    _, done, _ = budgeted
    assert done.id in [s.id for s in sdk.sweeps.list()]
    assert [s.id for s in sdk.sweeps.list(limit=1, page_size=1)] == [sdk.sweeps.list()[0].id]
    assert sdk.sweeps.get(done.id).model_dump(exclude={"budget_used"}) == done.model_dump(exclude={"budget_used"})
    with pytest.raises(Conflict, match="has 2 completed trials; parameter importances need at least 3"):
        sdk.sweeps.importances(done.id)
    with pytest.raises(Conflict, match="already succeeded; only a running sweep can be cancelled"):
        sdk.sweeps.cancel(done.id)
    with Client(service.url, other_key) as other, pytest.raises(NotFound, match=f"No sweep '{done.id}'"):
        other.sweeps.get(done.id)


def test_wait_times_out_then_cancel_stops_the_sweep(sdk, text_dataset):
    sweep = sdk.sweeps.create(
        text_dataset, "tiny-bert", GOOD_RATES, {**FIXED, "epochs": 500}, max_trials=4, parallelism=1,
        sampler="random", pruner="none",
    )  # fmt: skip
    with pytest.raises(WaitTimeout, match=f"sweep {sweep.id} is still running") as timed_out:
        sdk.sweeps.wait(sweep.id, timeout=0.5, poll_interval=0.2)
    assert timed_out.value.job.id == sweep.id
    assert sdk.sweeps.cancel(sweep.id).status == "cancelled"
    job_id = sdk.sweeps.trials(sweep.id)[0].job_id
    assert sdk.jobs.wait(job_id, timeout=120).status == "cancelled"
    ended = sdk.sweeps.wait(sweep.id, timeout=30)
    assert ended.status == "cancelled" and ended.trials_started == 1 and ended.counts == {"cancelled": 1}


# --- the CLI ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watched(cli_env, text_dataset, tmp_path_factory):
    """`sweeps create --space @file --watch --json`: 2 trials of 6 steps; one JSON object per line."""
    space = tmp_path_factory.mktemp("space") / "space.json"
    space.write_text(json.dumps(GOOD_RATES))
    result = finetune(
        cli_env, "sweeps", "create", "-d", text_dataset, "-m", "tiny-bert", "--space", f"@{space}",
        "--hyperparameters", json.dumps({**FIXED, "max_steps": 6}), "--hp", "eval_every_steps=3",
        "--max-trials", "2", "--parallelism", "1", "--sampler", "grid", "--pruner", "none", "--watch", "--json",
    )  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_sweeps_create_watch_json_ends_with_the_trials_and_the_best(watched):
    created, *progress, finished = watched
    assert created["status"] == "running" and created["spec"]["sampler"] == "grid"
    assert created["spec"]["hyperparameters"]["eval_every_steps"] == 3  # --hp over --hyperparameters
    assert progress and all(line["type"] == "progress" for line in progress)
    assert finished["type"] == "finished" and finished["sweep"]["status"] == "succeeded"
    trials = finished["trials"]
    assert sorted(t["hyperparameters"]["learning_rate"] for t in trials) == [5e-3, 1e-2]  # the grid, each once
    assert [t["steps"] for t in trials] == [6, 6] and finished["sweep"]["budget_used"]["steps"] == 12
    best = max((t for t in trials), key=lambda t: (t["objective"], -t["number"]))
    assert finished["sweep"]["best_trial"]["number"] == best["number"]


def test_sweeps_list_show_trials_and_watch_of_an_ended_sweep(cli_env, watched):
    sweep = watched[-1]["sweep"]
    best = sweep["best_trial"]
    assert sweep["id"] in [s["id"] for s in as_json(cli_env, "sweeps", "list")]
    assert as_json(cli_env, "sweeps", "show", sweep["id"])["best_trial"] == best
    assert [t["number"] for t in as_json(cli_env, "sweeps", "trials", sweep["id"])] == [0, 1]
    listed = finetune(cli_env, "sweeps", "list", "--limit", "5").stdout
    assert sweep["id"] in listed and "TRIALS" in listed and "2/2" in listed
    shown = finetune(cli_env, "sweeps", "show", sweep["id"]).stdout
    assert "grid sampler, none pruner" in shown and "succeeded 2" in shown and "steps 12" in shown
    assert f"best: trial {best['number']} val_accuracy {best['objective']:.4f}" in shown
    table = finetune(cli_env, "sweeps", "trials", sweep["id"]).stdout
    assert f"{best['number']} *" in table and "learning_rate=0.005" in table and "learning_rate=0.01" in table
    watched_text = finetune(cli_env, "sweeps", "watch", sweep["id"]).stdout
    lines = watched_text.strip().splitlines()
    assert f"sweep {sweep['id']} succeeded" in watched_text and "succeeded 2" in watched_text
    assert lines[-2] == f"best trial {best['number']}: val_accuracy {best['objective']:.4f}, model {best['model_id']}"
    assert lines[-1] == f"  learning_rate = {json.dumps(best['hyperparameters']['learning_rate'])}"


def test_sweeps_cancel_then_watch_exits_3_and_errors_exit_1_or_2(cli_env, text_dataset):
    created = as_json(
        cli_env, "sweeps", "create", "-d", text_dataset, "-m", "tiny-bert", "--space", json.dumps(GOOD_RATES),
        "--hp", "epochs=500", "--hp", "max_length=16", "--max-trials", "3", "--parallelism", "1",
    )  # fmt: skip
    said = finetune(cli_env, "sweeps", "cancel", created["id"]).stdout
    assert said.startswith(f"sweep {created['id']}: cancelled (")
    out = finetune(cli_env, "sweeps", "watch", created["id"], "--interval", "0.3", code=3).stdout
    assert f"sweep {created['id']} cancelled" in out and "cancelled" in out and "no trial completed" in out
    missing = finetune(cli_env, "sweeps", "show", "nope", code=1)
    assert "error: 404 Not found: No sweep 'nope'" in missing.stderr
    bad = finetune(cli_env, "sweeps", "create", "-d", text_dataset, "-m", "tiny-bert", "--space",
                   '{"learning_rat": {"type": "uniform", "low": 0, "high": 1}}', code=1)  # fmt: skip
    assert "error: 422" in bad.stderr and "search_space.learning_rat" in bad.stderr
    assert "not JSON" in finetune(cli_env, "sweeps", "create", "-d", "x", "-m", "m", "--space", "{", code=2).stderr
    assert (
        "cannot read" in finetune(cli_env, "sweeps", "create", "-d", "x", "-m", "m", "--space", "@/nope", code=2).stderr
    )
