"""Defaults that depend on the task: filled in when the job is accepted, stored, and used by the worker."""

from __future__ import annotations

import pytest

from app.jobs.schemas import Hyperparameters
from tests.conftest import wait_for_job
from tests.factories import image_zip, text_csv


@pytest.mark.parametrize(
    ("task", "given", "expected"),
    [
        ("image_classification", {}, {"learning_rate": 1e-3, "lr_scheduler": "cosine", "epochs": 5}),
        ("text_classification", {}, {"learning_rate": 1e-4, "lr_scheduler": "linear", "epochs": 3}),
        ("image_classification", {"optimizer": "sgd"}, {"learning_rate": 1e-2}),
        ("text_classification", {"optimizer": "sgd"}, {"learning_rate": 1e-3}),
        (
            "image_classification",
            {"learning_rate": 3e-4, "lr_scheduler": "constant", "epochs": 2},
            {"learning_rate": 3e-4, "lr_scheduler": "constant", "epochs": 2},
        ),
    ],
)
def test_task_defaults_fill_only_what_the_user_left_out(task, given, expected):
    filled = Hyperparameters.model_validate(given).for_task(task)
    assert {k: getattr(filled, k) for k in expected} == expected
    assert filled.for_task(task) == filled
    assert filled.batch_size == 32 and filled.weight_decay == 0.01


@pytest.mark.parametrize(
    ("task", "upload", "base_model", "rate"),
    [
        ("image_classification", ("c.zip", image_zip(per_class=10), "application/zip"), "tiny-vit", 1e-3),
        ("text_classification", ("r.csv", text_csv(), "text/csv"), "tiny-bert", 1e-4),
    ],
)
def test_a_job_stores_and_trains_with_its_tasks_defaults(client, task, upload, base_model, rate):
    dataset = client.post("/datasets", files={"file": upload}, data={"task": task})
    assert dataset.status_code == 201, dataset.text
    hp = {"lr_scheduler": "constant", "max_steps": 1, "batch_size": 8, "max_length": 16}
    submitted = client.post(
        "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": base_model, "hyperparameters": hp}
    )
    assert submitted.status_code == 201, submitted.text
    stored = submitted.json()["hyperparameters"]
    assert stored["learning_rate"] == rate
    assert stored["epochs"] == (5 if task == "image_classification" else 3)
    assert stored["lr_scheduler"] == "constant"
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    used = client.get(f"/jobs/{job['id']}/metrics", params={"name": "learning_rate"}).json()["items"]
    assert [m["value"] for m in used] == pytest.approx([rate])
