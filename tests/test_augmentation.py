"""Image augmentation (issue 14): training batches only, seeded by (job seed, epoch, batch), never evaluation.

The data pipeline is tested directly on a real tiny image dataset and the tiny ViT; jobs run on the real service.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.jobs.schemas import Hyperparameters
from tests.conftest import wait_for_job
from tests.factories import COLORS, image_bytes, image_zip

LABELS = sorted(COLORS)


def image_records(per_class: int = 12) -> list[dict]:
    records = []
    for c, label in enumerate(LABELS):
        for i in range(per_class):
            split = "train" if i < per_class - 4 else ("val" if i < per_class - 2 else "test")
            records.append({"image": image_bytes(COLORS[label], seed=c * 1000 + i), "label": label, "split": split})
    return records


def build(models_dir: Path, augmentation: str, budget_bytes: int | None = None):
    from worker.training.setup import build_run

    hp = Hyperparameters(augmentation=augmentation, batch_size=8, epochs=1, seed=7)
    run, _ = build_run(
        "image_classification", models_dir / "tiny-vit", LABELS, image_records(), hp, torch.device("cpu"), budget_bytes
    )
    return run


def training_batch(run, epoch: int, batch: int) -> torch.Tensor:
    """The pixel_values fit() would feed for (epoch, batch in epoch)."""
    from worker.training.augment import epoch_augmentation
    from worker.training.data import batches, epoch_order

    hp, train = run.hp, run.splits["train"]
    augment = epoch_augmentation(hp.augmentation, run.prep.image_size, hp.seed, epoch)
    order = epoch_order(len(train), hp.seed, epoch)
    inputs, _ = next(batches(train, run.spec, run.processor, run.prep, run.batch_size, order, batch, augment))
    return inputs["pixel_values"]


@pytest.mark.parametrize("augmentation", ["light", "trivial"])
def test_augmentation_changes_training_batches_reproducibly(models_dir: Path, augmentation: str):
    plain, augmented = build(models_dir, "none"), build(models_dir, augmentation)
    assert plain.prep.image_size == augmented.prep.image_size == 32
    for epoch, batch in ((0, 0), (0, 1), (1, 0)):
        pixels = training_batch(augmented, epoch, batch)
        assert pixels.shape == training_batch(plain, epoch, batch).shape == (8, 3, 32, 32)
        assert not torch.equal(pixels, training_batch(plain, epoch, batch))  # augmentation moved the pixels
        assert torch.equal(pixels, training_batch(augmented, epoch, batch))  # same seed, epoch, batch: same pixels
    # another epoch or another batch draws other crops, flips and ops
    assert not torch.equal(training_batch(augmented, 0, 0), training_batch(augmented, 1, 0))
    assert not torch.equal(training_batch(augmented, 0, 0), training_batch(augmented, 0, 1))
    # the draw happens in a forked RNG: the global one (dropout, the next batch's draw) is untouched
    state = torch.get_rng_state()
    training_batch(augmented, 0, 0)
    assert torch.equal(state, torch.get_rng_state())


def test_images_decoded_per_batch_are_augmented_alike(models_dir: Path):
    """A dataset over the memory budget is decoded per batch; its augmented batches are the cached ones'."""
    from app.tasktypes.image import DecodedPerBatch

    cached, per_batch = build(models_dir, "trivial"), build(models_dir, "trivial", budget_bytes=1)
    assert isinstance(per_batch.splits["train"].encoded, DecodedPerBatch)
    assert torch.equal(training_batch(cached, 0, 1), training_batch(per_batch, 0, 1))


def test_evaluation_batches_are_never_augmented(models_dir: Path):
    from worker.training.data import batches
    from worker.training.loop import evaluate

    plain, augmented = build(models_dir, "none"), build(models_dir, "trivial")
    for split in ("val", "test", "train"):
        data_plain, data_aug = plain.splits[split], augmented.splits[split]
        assert torch.equal(data_plain.encoded, data_aug.encoded)  # the decoded cache itself is never augmented
        pixels = [
            b[0]["pixel_values"] for b in batches(data_aug, augmented.spec, augmented.processor, augmented.prep, 64)
        ]
        expected = [b[0]["pixel_values"] for b in batches(data_plain, plain.spec, plain.processor, plain.prep, 64)]
        assert all(torch.equal(a, b) for a, b in zip(pixels, expected, strict=True))
        # same seed, same initial weights: evaluation gives exactly the same loss and predictions
        loss_aug, _, predicted_aug = evaluate(augmented, split)
        loss_plain, _, predicted_plain = evaluate(plain, split)
        assert loss_aug == loss_plain and (predicted_aug == predicted_plain).all()


def test_a_trivial_augmentation_job_trains_and_its_spec_says_so(service, client):
    dataset = client.post(
        "/datasets",
        files={"file": ("aug.zip", image_zip(per_class=10), "application/zip")},
        data={"task": "image_classification"},
    )
    assert dataset.status_code == 201, dataset.text
    hp = {"augmentation": "trivial", "epochs": 1, "batch_size": 4, "seed": 5}
    answer = client.post(
        "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-vit", "hyperparameters": hp}
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["hyperparameters"]["augmentation"] == "trivial"
    job = wait_for_job(client, answer.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["hyperparameters"]["augmentation"] == "trivial"
    assert job["step"] == job["total_steps"] == 4  # 16 training images, batches of 4
    default = client.post("/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-vit",
                                         "hyperparameters": {"max_steps": 1}})  # fmt: skip
    assert default.json()["hyperparameters"]["augmentation"] == "none"
    wait_for_job(client, default.json()["id"])


def test_augmentation_on_a_text_dataset_is_a_422(client, text_dataset):
    body = {"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": {"augmentation": "light"}}
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "image datasets" in answer.json()["detail"] and '"none"' in answer.json()["detail"]
    body["hyperparameters"] = {"augmentation": "heavy"}
    assert client.post("/jobs", json=body).status_code == 422
