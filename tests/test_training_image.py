"""An image job end to end over HTTP: a zip of class folders, a tiny ViT, report, predict with files and base64."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

from app.artifacts.layout import model_key
from tests.conftest import wait_for_job
from tests.factories import COLORS, image_bytes, image_zip

HP = {
    "epochs": 2, "batch_size": 8, "learning_rate": 0.002, "optimizer": "sgd", "momentum": 0.9,
    "lr_scheduler": "cosine", "freeze": "backbone", "eval_every_steps": 3, "seed": 3,
    "early_stopping": {"metric": "val_accuracy", "patience": 10},
}  # fmt: skip


@pytest.fixture(scope="module")
def image_job(service, key):
    with service.client(key) as client:
        dataset = client.post(
            "/datasets",
            files={"file": ("colors.zip", image_zip(), "application/zip")},
            data={"task": "image_classification"},
        )
        assert dataset.status_code == 201, dataset.text
        job = client.post(
            "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-vit", "hyperparameters": HP}
        )
        assert job.status_code == 201, job.text
        return wait_for_job(client, job.json()["id"]), dataset.json()


def test_image_dataset_counts(image_job):
    _, dataset = image_job
    assert dataset["task"] == "image_classification"
    assert dataset["labels"] == ["blue", "red"]
    assert dataset["counts"]["train"] == {"blue": 16, "red": 16}
    assert dataset["name"] == "colors.zip"


def test_image_job_succeeds_evaluating_every_n_steps(client, image_job):
    job, _ = image_job
    assert job["status"] == "succeeded", job["error"]
    assert job["total_steps"] == 8
    val_steps = [
        m["step"] for m in client.get(f"/jobs/{job['id']}/metrics", params={"name": "val_loss"}).json()["items"]
    ]
    assert val_steps == [3, 6, 8]
    assert job["best_metric_name"] == "val_accuracy"


def test_frozen_backbone_left_the_backbone_unchanged(service, client, image_job, models_dir):
    job, _ = image_job
    folder = service.store().local_dir(model_key(job["model_id"]))
    tuned = AutoModelForImageClassification.from_pretrained(folder)
    base = AutoModelForImageClassification.from_pretrained(models_dir / "tiny-vit")
    base_params = dict(base.named_parameters())
    for name, param in tuned.named_parameters():
        if not name.startswith("classifier"):
            assert param.detach().equal(base_params[name].detach()), name
    assert AutoImageProcessor.from_pretrained(folder) is not None
    assert tuned.config.id2label == {0: "blue", 1: "red"}


def test_image_report(client, image_job):
    job, _ = image_job
    report = client.get(f"/jobs/{job['id']}/report").json()
    assert set(report["per_class"]) == {"blue", "red"}
    assert report["num_examples"] == 4
    assert len(report["confusion_matrix"]["matrix"]) == 2


def test_predict_images_multipart_and_base64(client, image_job):
    job, _ = image_job
    red, blue = image_bytes(COLORS["red"], seed=99), image_bytes(COLORS["blue"], seed=98, fmt="JPEG")
    files = [("files", ("a.png", red, "image/png")), ("files", ("b.jpg", blue, "image/jpeg"))]
    multipart = client.post("/predict", files=files, data={"model": job["model_id"], "top_k": "2"})
    assert multipart.status_code == 200, multipart.text
    assert len(multipart.json()["predictions"]) == 2
    encoded = [base64.b64encode(red).decode(), base64.b64encode(blue).decode()]
    as_json = client.post("/predict", json={"model": job["model_id"], "images": encoded, "top_k": 2})
    assert as_json.status_code == 200, as_json.text
    for a, b in zip(multipart.json()["predictions"], as_json.json()["predictions"], strict=True):
        assert [p["label"] for p in a] == [p["label"] for p in b]
        assert [p["score"] for p in a] == pytest.approx([p["score"] for p in b], abs=1e-5)


def test_predict_rejects_wrong_input_kind(client, image_job):
    job, _ = image_job
    answer = client.post("/predict", json={"model": job["model_id"], "texts": ["hello"]})
    assert answer.status_code == 422
    assert "images" in answer.json()["detail"]
    broken = client.post("/predict", json={"model": job["model_id"], "images": ["bm90IGFuIGltYWdl"]})
    assert broken.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("base_model", "image_size"), [("tiny-timm", 48), ("tiny-vit", None), ("tiny-vit", 48)])
def test_plain_transformers_preprocesses_the_exported_model_as_training_did(service, client, base_model, image_size):
    """The saved processor resizes to the size trained at (48 px, not timm's native 64 with its 0.875 crop), so
    AutoImageProcessor + AutoModelForImageClassification give the probabilities /predict gives. A ViT pretrained at
    32 px trains at 48 by interpolating its position embeddings; finetune.json says so for those who load it."""
    dataset = client.post(
        "/datasets", files={"file": ("c.zip", image_zip(per_class=10), "application/zip")},
        data={"task": "image_classification"},
    )  # fmt: skip
    hp = {"max_steps": 2, "batch_size": 8, "image_size": image_size}
    submitted = client.post(
        "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": base_model, "hyperparameters": hp}
    )
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    folder = service.store().local_dir(model_key(job["model_id"]))
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    red = image_bytes(COLORS["red"], seed=97)
    pixels = processor(Image.open(io.BytesIO(red)).convert("RGB"), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == (image_size or 32)
    interpolate = json.loads((folder / "finetune.json").read_text())["interpolate_pos_encoding"]
    assert interpolate == (base_model == "tiny-vit" and image_size is not None)
    with torch.no_grad():
        kwargs = {"interpolate_pos_encoding": True} if interpolate else {}
        probs = model(pixel_values=pixels, **kwargs).logits.softmax(-1)[0].tolist()
    served = client.post(
        "/predict", files=[("files", ("r.png", red, "image/png"))], data={"model": job["model_id"], "top_k": "2"}
    ).json()["predictions"][0]
    assert model.config.id2label == {0: "blue", 1: "red"}
    expected = {model.config.id2label[i]: p for i, p in enumerate(probs)}
    assert {p["label"]: p["score"] for p in served} == pytest.approx(expected, abs=1e-4)


def test_batches_with_flags_move_to_an_accelerator():
    """A ViT batch at another size carries interpolate_pos_encoding=True; moving it off the CPU must keep it."""
    from worker.training.loop import to_device

    moved = to_device({"pixel_values": torch.zeros(2, 3, 8, 8), "interpolate_pos_encoding": True}, torch.device("meta"))
    assert moved["pixel_values"].device.type == "meta"
    assert moved["interpolate_pos_encoding"] is True
