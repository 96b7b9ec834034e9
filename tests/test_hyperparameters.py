"""Defaults that adapt to the task and the data: decided when the job is accepted, stored with the reason, used."""

from __future__ import annotations

import math

import pytest

from app.jobs.defaults import MAX_EPOCHS, TASK_DEFAULTS, apply_defaults, auto_epochs
from app.jobs.schemas import Hyperparameters
from app.tasktypes.types import TaskType
from tests.conftest import wait_for_job
from tests.factories import image_zip, text_csv

TEXT, IMAGE = TaskType.text_classification, TaskType.image_classification


@pytest.mark.parametrize(
    ("task", "given", "expected"),
    [
        (IMAGE, {}, {"learning_rate": 1e-3, "lr_scheduler": "cosine"}),
        (TEXT, {}, {"learning_rate": 1e-4, "lr_scheduler": "linear"}),
        (IMAGE, {"optimizer": "sgd"}, {"learning_rate": 1e-2}),
        (TEXT, {"optimizer": "sgd"}, {"learning_rate": 1e-3}),
        (
            IMAGE,
            {
                "learning_rate": 3e-4,
                "lr_scheduler": "constant",
                "epochs": 2,
                "strategy": "full",
                "batch_size": 32,
                "precision": "bf16",
            },
            {"learning_rate": 3e-4, "lr_scheduler": "constant", "epochs": 2, "strategy": "full", "auto": {}},
        ),
    ],
)
def test_task_defaults_fill_only_what_the_user_left_out(task, given, expected):
    filled = apply_defaults(Hyperparameters.model_validate(given), task, train_rows=5000)
    assert {k: getattr(filled, k) for k in expected} == expected
    assert apply_defaults(filled, task, train_rows=5000) == filled  # idempotent: the worker applies them again
    assert filled.batch_size == TASK_DEFAULTS[task]["batch_size"] and filled.weight_decay == 0.01
    assert filled.batch_size == (16 if task == TEXT else 32)


@pytest.mark.parametrize(
    ("task", "given", "batch", "why"),
    [
        (TEXT, {}, 16, "16: the default for text classification"),
        (IMAGE, {}, 32, "32: the default for image classification"),
        (TEXT, {"gradient_accumulation_steps": 4}, 16, "16: the default"),
        (TEXT, {"gradient_accumulation_steps": 3}, 18, "rounded up to a multiple of gradient_accumulation_steps 3"),
        (TEXT, {"batch_size": 8}, 8, None),
    ],
)
def test_batch_size_is_the_tasks_unless_given_and_always_splits_into_the_micro_batches(task, given, batch, why):
    filled = apply_defaults(Hyperparameters.model_validate(given), task, train_rows=1000)
    assert filled.batch_size == batch and batch % filled.gradient_accumulation_steps == 0
    assert (why is None) == ("batch_size" not in filled.auto)
    if why:
        assert why in filled.auto["batch_size"]
    assert f"batch {batch})" in filled.auto["epochs"]  # epochs were counted in batches of the chosen size


@pytest.mark.parametrize("task", [TEXT, IMAGE])
@pytest.mark.parametrize("rows", [1, 10, 100, 300, 530, 1000, 2000, 3000, 10_000, 100_000, 1_000_000])
@pytest.mark.parametrize("batch", [8, 32])
def test_auto_epochs_reach_enough_steps_without_overdoing_large_sets(task, rows, batch):
    epochs, reason = auto_epochs(task, rows, batch)
    steps_per_epoch = math.ceil(rows / batch)
    floor, usual = TASK_DEFAULTS[task]["min_steps"], TASK_DEFAULTS[task]["epochs"]
    assert usual <= epochs <= MAX_EPOCHS
    assert epochs * steps_per_epoch >= floor or epochs == MAX_EPOCHS  # enough steps, unless capped
    assert epochs == usual or (epochs - 1) * steps_per_epoch < floor  # no epoch more than the floor needs
    assert f"{epochs} epochs of {steps_per_epoch} steps" in reason and f"{rows} training examples" in reason


def test_auto_choices_for_small_and_large_sets_are_stored_with_their_reason():
    small = apply_defaults(Hyperparameters(), TEXT, train_rows=530)
    assert small.epochs == auto_epochs(TEXT, 530, 16)[0] > TASK_DEFAULTS[TEXT]["epochs"]  # more than a large set gets
    assert small.strategy == "full" and "lp_ft" in small.auto["strategy"]
    assert "530 training examples" in small.auto["epochs"]
    assert small.eval_every_steps == math.ceil(small.epochs * math.ceil(530 / 16) / 10)  # ~10 evaluations, not 16
    assert apply_defaults(Hyperparameters(eval_every_steps=7), TEXT, train_rows=530).eval_every_steps == 7
    large = apply_defaults(Hyperparameters(), IMAGE, train_rows=50_000)
    assert large.epochs == TASK_DEFAULTS[IMAGE]["epochs"] and large.strategy == "full"
    assert Hyperparameters(freeze="backbone").strategy == "head_only"
    assert Hyperparameters(strategy="head_only").freeze == "backbone"
    with pytest.raises(ValueError, match="cannot apply"):
        Hyperparameters(freeze="backbone", strategy="lp_ft")


@pytest.mark.parametrize(
    ("task", "upload", "base_model", "rate"),
    [
        ("image_classification", ("c.zip", image_zip(per_class=10), "application/zip"), "tiny-vit", 1e-4),
        ("image_classification", ("c.zip", image_zip(per_class=10), "application/zip"), "tiny-timm", 1e-3),
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
    train_rows = sum(dataset.json()["counts"]["train"].values())
    assert stored["learning_rate"] == rate
    assert stored["epochs"] == auto_epochs(TaskType(task), train_rows, 8)[0]
    assert f"{train_rows} training examples, batch 8" in stored["auto"]["epochs"]
    assert stored["strategy"] == "full" and stored["lr_scheduler"] == "constant"
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    used = client.get(f"/jobs/{job['id']}/metrics", params={"name": "learning_rate"}).json()["items"]
    assert [m["value"] for m in used] == pytest.approx([rate])


@pytest.mark.parametrize(
    ("given", "devices", "batch", "why"),
    [
        ({}, 4, 16, None),
        ({}, 3, 18, "rounded up to a multiple of resources.gpus 3"),
        ({"gradient_accumulation_steps": 3}, 2, 18, "multiple of gradient_accumulation_steps 3 x resources.gpus 2"),
        ({"gradient_accumulation_steps": 4}, 3, 24, "(16), rounded up"),
    ],
)
def test_a_batch_left_out_splits_across_the_devices_too(given, devices, batch, why):
    """On several devices the batch stays global: each device trains batch / devices, in the micro-batches."""
    filled = apply_defaults(Hyperparameters.model_validate(given), TEXT, train_rows=1000, devices=devices)
    assert filled.batch_size == batch and batch % (filled.gradient_accumulation_steps * devices) == 0
    assert why is None or why in filled.auto["batch_size"]
