"""Evaluation-gated promotion (issue 14): PUT /aliases/{name} with require_improvement moves the alias only to a model
that beats the alias's current one on the test split of the same dataset; otherwise 409 with both scores."""

from __future__ import annotations

import csv
import io

import httpx
import pytest

from tests.conftest import wait_for_job
from tests.factories import text_rows


def upload(client: httpx.Client, seed: int) -> str:
    """Sentiment rows with a test split of 20, so that test scores tell models apart."""
    rows = [{**r, "split": "train"} for r in text_rows(30, seed=seed)]
    rows += [{**r, "split": "val"} for r in text_rows(5, seed=seed + 1)]
    rows += [{**r, "split": "test"} for r in text_rows(10, seed=seed + 2)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["text", "label", "split"])
    writer.writeheader()
    writer.writerows(rows)
    answer = client.post(
        "/datasets", files={"file": ("g.csv", out.getvalue().encode())}, data={"task": "text_classification"}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def train(client: httpx.Client, dataset: str, **hp: object) -> dict:
    """A finished tiny-bert model on `dataset`, as GET /models/{id} shows it."""
    body = {"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": {"max_length": 16, **hp}}
    job = client.post("/jobs", json=body)
    assert job.status_code == 201, job.text
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    return client.get(f"/models/{done['model_id']}").json()


@pytest.fixture(scope="module")
def models(service, key) -> dict[str, dict]:
    with service.client(key) as client:
        dataset, other = upload(client, seed=11), upload(client, seed=21)
        weak = train(client, dataset, max_steps=1, learning_rate=1e-6, batch_size=8, early_stopping=None)
        strong = train(  # as tests/test_baselines.py's model that learns
            client, dataset, epochs=15, learning_rate=0.003, batch_size=8, seed=3, early_stopping=None, strategy="lp_ft"
        )
        elsewhere = train(client, other, max_steps=1, batch_size=8)
    return {"weak": weak, "strong": strong, "elsewhere": elsewhere}


def gated(client: httpx.Client, alias: str, model: dict, metric: str = "macro_f1") -> httpx.Response:
    body = {"model_id": model["id"], "force": True, "require_improvement": {"metric": metric}}
    return client.put(f"/aliases/{alias}", json=body)


def alias_target(client: httpx.Client, alias: str) -> str:
    return {a["name"]: a["model_id"] for a in client.get("/aliases").json()}[alias]


@pytest.mark.parametrize("metric", ["macro_f1", "accuracy"])
def test_a_gated_alias_moves_only_to_a_better_model(client, models, metric):
    weak, strong = models["weak"], models["strong"]
    low, high = weak["metrics"][f"test_{metric}"], strong["metrics"][f"test_{metric}"]
    assert high > low, (low, high)  # a trained model against a barely touched one
    alias = f"gated-{metric.replace('_', '-')}"
    created = gated(client, alias, weak, metric)  # a new alias just points at the model
    assert created.status_code == 200 and created.json()["model_id"] == weak["id"], created.text
    moved = gated(client, alias, strong, metric)
    assert moved.status_code == 200 and moved.json()["model_id"] == strong["id"], moved.text

    refused = gated(client, alias, weak, metric)
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["metric"] == metric
    assert problem["current"] == {"model_id": strong["id"], "score": high}
    assert problem["candidate"] == {"model_id": weak["id"], "score": low}
    assert f"{low:.4f} against {high:.4f}" in problem["detail"] and "without require_improvement" in problem["detail"]
    assert alias_target(client, alias) == strong["id"]  # not moved
    again = gated(client, alias, strong, metric)  # the model it already points at: nothing to beat
    assert again.status_code == 200 and again.json()["model_id"] == strong["id"]
    ungated = client.put(f"/aliases/{alias}", json={"model_id": weak["id"], "force": True})
    assert ungated.status_code == 200 and alias_target(client, alias) == weak["id"]  # the gate is opt-in


def test_models_evaluated_on_different_datasets_do_not_compare(client, models):
    assert gated(client, "gated-datasets", models["weak"]).status_code == 200
    answer = gated(client, "gated-datasets", models["elsewhere"])
    assert answer.status_code == 422, answer.text
    assert "evaluated on different datasets" in answer.json()["detail"]
    assert alias_target(client, "gated-datasets") == models["weak"]["id"]


def test_the_gate_names_only_known_metrics_and_another_teams_model_is_a_404(client, models, service, other_key):
    wrong = client.put(
        "/aliases/gated-x", json={"model_id": models["weak"]["id"], "require_improvement": {"metric": "f2"}}
    )
    assert wrong.status_code == 422 and "require_improvement.metric" in wrong.text
    with service.client(other_key) as other:
        answer = gated(other, "gated-x", models["strong"])
    assert answer.status_code == 404
