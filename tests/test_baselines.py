"""Every report sets the fine-tuned model beside its cheapest honest baselines; a model that learned nothing is flagged
and an alias takes it only when forced."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from app.artifacts.layout import dataset_key, read_dataset
from tests.conftest import wait_for_job
from tests.factories import text_rows

LEARNS = {
    "epochs": 15, "batch_size": 8, "learning_rate": 0.003, "seed": 3, "max_length": 16, "early_stopping": None,
    "strategy": "lp_ft",  # the named option: the head starts from a probe on what it reads
}  # fmt: skip
C_GRID = (1.0, 0.1, 10.0, 0.01)


def _submit(client, dataset_id: str, hp: dict) -> dict:
    answer = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": hp})
    assert answer.status_code == 201, answer.text
    job = wait_for_job(client, answer.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def _events(client, job_id: str) -> dict[str, str]:
    return {
        e["kind"]: e["message"] for e in client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    }


def _mean_pooled_features(model_dir, texts: list[str]) -> np.ndarray:
    """What the report's probe should have used, computed here with plain transformers."""
    tokenizer, encoder = AutoTokenizer.from_pretrained(str(model_dir)), AutoModel.from_pretrained(str(model_dir))
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, max_length=16, padding=True, return_tensors="pt")
        hidden = encoder.eval()(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_the_report_shows_the_baselines_computed_on_the_same_splits(service, client):
    dataset = client.post(
        "/datasets", files={"file": ("r.csv", _csv(text_rows(40, seed=4)))}, data={"task": "text_classification"}
    ).json()
    job = _submit(client, dataset["id"], LEARNS)
    report = client.get(f"/jobs/{job['id']}/report").json()
    baselines = report["baselines"]

    records = read_dataset(service.store(), dataset_key(dataset["id"]))
    split = {name: [r for r in records if r["split"] == name] for name in ("train", "val", "test")}
    labels = sorted({r["label"] for r in records})
    y = {name: np.array([labels.index(r["label"]) for r in rows]) for name, rows in split.items()}
    majority = np.bincount(y["train"]).argmax()
    assert baselines["majority_class"]["label"] == labels[majority]
    assert baselines["majority_class"]["accuracy"] == pytest.approx((y["test"] == majority).mean(), abs=1e-6)

    x = {
        name: _mean_pooled_features(service.models_dir / "tiny-bert", [r["text"] for r in rows])
        for name, rows in split.items()
    }
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-6
    best_val, best_test = -1.0, None
    for c in C_GRID:
        probe = LogisticRegression(C=c, max_iter=1000).fit((x["train"] - mean) / std, y["train"])
        val = (probe.predict((x["val"] - mean) / std) == y["val"]).mean()
        if val > best_val:
            best_val, best_test = val, (probe.predict((x["test"] - mean) / std) == y["test"]).mean()
    assert baselines["linear_probe"]["accuracy"] == pytest.approx(best_test, abs=1e-6)
    assert "mean-pooled" in baselines["linear_probe"]["features"]

    margins = report["compared_to_baselines"]
    assert margins["accuracy_over_linear_probe"] == pytest.approx(report["accuracy"] - best_test, abs=1e-5)
    assert report["strategy"] == "lp_ft" and report["below_baseline"] is False and job["below_baseline"] is False
    events = _events(client, job["id"])
    assert "linear probe" in events["baselines"] and "majority class" in events["baselines"]
    assert " s: " in events["baselines"]  # what the baselines cost, beside the fine-tune's time
    assert {"beat_baselines", "below_linear_probe"} & set(events)
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["below_baseline"] is False and model["metrics"]["linear_probe_accuracy"] == pytest.approx(best_test)
    assert client.put("/aliases/baseline-ok", json={"model_id": job["model_id"]}).status_code == 200


def _csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_model_that_never_beats_the_majority_class_is_flagged_and_needs_force(client):
    # The validation split holds only the training split's most common class, so always predicting it scores 100%
    # there: no model can beat that.
    rows = [{**r, "split": "train"} for r in text_rows(12, seed=5) + text_rows(4, seed=7)[:4]]
    rows += [{"text": "good fun", "label": "positive", "split": "val"}] * 4
    rows += [{**r, "split": "test"} for r in text_rows(3, seed=6)]
    dataset = client.post("/datasets", files={"file": ("v.csv", _csv(rows))}, data={"task": "text_classification"})
    assert dataset.status_code == 201, dataset.text
    job = _submit(client, dataset.json()["id"], {"epochs": 2, "batch_size": 8, "max_length": 16})
    assert job["below_baseline"] is True
    report = client.get(f"/jobs/{job['id']}/report").json()
    assert report["below_baseline"] is True
    assert "learned nothing" in _events(client, job["id"])["below_baseline"]
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["below_baseline"] is True

    refused = client.put("/aliases/flagged", json={"model_id": job["model_id"]})
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert '"force": true' in refused.json()["detail"]
    assert "flagged" not in {a["name"] for a in client.get("/aliases").json()}
    forced = client.put("/aliases/flagged", json={"model_id": job["model_id"], "force": True})
    assert forced.status_code == 200 and forced.json()["model_id"] == job["model_id"]
