"""A text job end to end over HTTP: upload, fine-tune a tiny BERT, metrics, checkpoints, report, model, predict."""

from __future__ import annotations

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.artifacts.layout import model_key
from tests.conftest import wait_for_job
from tests.factories import text_csv

# Enough steps for the tiny BERT to learn the sentiment words (it needs about 50); no early stopping, so the series
# below has every step.
HP = {"epochs": 15, "batch_size": 8, "learning_rate": 0.003, "seed": 7, "max_length": 16, "early_stopping": None}


@pytest.fixture(scope="module")
def text_job(service, key):
    with service.client(key) as client:
        dataset = client.post(
            "/datasets",
            files={"file": ("reviews.csv", text_csv(), "text/csv")},
            data={"task": "text_classification", "name": "reviews"},
        )
        assert dataset.status_code == 201, dataset.text
        job = client.post(
            "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-bert", "hyperparameters": HP}
        )
        assert job.status_code == 201, job.text
        assert job.json()["status"] == "queued"
        return wait_for_job(client, job.json()["id"]), dataset.json()


def test_dataset_upload_reports_classes_counts_and_split(text_job):
    _, dataset = text_job
    assert dataset["labels"] == ["negative", "positive"]
    assert dataset["num_examples"] == 60
    assert dataset["counts"]["train"] == {"negative": 24, "positive": 24}
    assert dataset["counts"]["val"] == {"negative": 3, "positive": 3}
    assert dataset["counts"]["test"] == {"negative": 3, "positive": 3}


def test_job_succeeds_with_progress(text_job):
    job, _ = text_job
    assert job["status"] == "succeeded", job["error"]
    assert job["total_steps"] == 15 * 6
    assert job["step"] == job["total_steps"]
    assert job["progress"] == 1.0
    assert job["best_metric_name"] == "val_accuracy"
    assert job["model_id"]


def test_metrics_series_and_filters(client, text_job):
    job, _ = text_job
    losses = client.get(f"/jobs/{job['id']}/metrics", params={"name": "train_loss"}).json()["items"]
    assert [m["step"] for m in losses] == list(range(1, 91))
    assert all(m["value"] > 0 for m in losses)
    val = client.get(f"/jobs/{job['id']}/metrics", params={"name": "val_accuracy"}).json()["items"]
    assert [m["step"] for m in val] == list(range(6, 91, 6))
    later = client.get(f"/jobs/{job['id']}/metrics", params={"name": "train_loss", "after_step": 87}).json()["items"]
    assert [m["step"] for m in later] == [88, 89, 90]
    page = client.get(f"/jobs/{job['id']}/metrics", params={"limit": 5}).json()
    assert len(page["items"]) == 5 and page["next_cursor"]
    rest = client.get(f"/jobs/{job['id']}/metrics", params={"limit": 10000, "cursor": page["next_cursor"]}).json()
    everything = client.get(f"/jobs/{job['id']}/metrics", params={"limit": 10000}).json()["items"]
    assert page["items"] + rest["items"] == everything
    assert rest["next_cursor"] is None


def test_checkpoints_keep_best_and_last(client, text_job):
    job, _ = text_job
    checkpoints = client.get(f"/jobs/{job['id']}/checkpoints").json()
    assert 1 <= len(checkpoints) <= 2
    assert checkpoints[-1]["step"] == 90
    assert sum(c["is_best"] for c in checkpoints) == 1


def test_report_on_test_split(client, text_job):
    job, dataset = text_job
    report = client.get(f"/jobs/{job['id']}/report").json()
    assert report["split"] == "test"
    assert report["num_examples"] == 6
    assert set(report["per_class"]) == {"negative", "positive"}
    for row in report["per_class"].values():
        assert set(row) == {"precision", "recall", "f1", "support"}
        assert row["support"] == 3
    assert report["confusion_matrix"]["labels"] == ["negative", "positive"]
    matrix = report["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == 6
    assert report["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 6)
    assert {"macro_avg", "weighted_avg", "loss"} <= set(report)


def test_model_registered_and_loadable_with_plain_transformers(service, client, text_job):
    job, _ = text_job
    model = client.get(f"/models/{job['model_id']}").json()
    assert model["task"] == "text_classification"
    assert model["labels"] == ["negative", "positive"]
    assert model["metrics"]["test_accuracy"] == client.get(f"/jobs/{job['id']}/report").json()["accuracy"]
    folder = service.store().local_dir(model_key(model["id"]))
    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    assert hf.config.id2label == {0: "negative", 1: "positive"}
    assert AutoTokenizer.from_pretrained(folder)("good film")["input_ids"]
    assert (folder / "model.safetensors").is_file()
    listed = client.get("/models").json()["items"]
    assert model["id"] in [m["id"] for m in listed]


def test_predict_by_model_id_and_alias(client, text_job):
    job, _ = text_job
    body = {"model": job["model_id"], "texts": ["a great fun film", "the worst movie"], "top_k": 2}
    answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model_id"] == job["model_id"]
    assert len(result["predictions"]) == 2
    for ranked in result["predictions"]:
        assert {p["label"] for p in ranked} == {"negative", "positive"}
        assert sum(p["score"] for p in ranked) == pytest.approx(1.0, abs=1e-4)
        assert ranked[0]["score"] >= ranked[1]["score"]
    assert client.put("/aliases/production", json={"model_id": job["model_id"]}).status_code == 200
    by_alias = client.post("/predict", json={"texts": ["good"]}).json()
    assert by_alias["model_id"] == job["model_id"]
    assert len(by_alias["predictions"][0]) == 1


def test_events_tell_the_story(client, text_job):
    job, _ = text_job
    kinds = [e["kind"] for e in client.get(f"/jobs/{job['id']}/events").json()["items"]]
    assert kinds[0] == "queued" and "claimed" in kinds and "checkpoint" in kinds and kinds[-1] == "succeeded"
