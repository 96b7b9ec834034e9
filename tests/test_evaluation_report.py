"""The evaluation a team can act on: calibration (ECE, reliability bins, temperature scaling), the most-confused
pairs, the most confident mistakes, precision/recall by threshold; reports of other checkpoints on request; /predict
with calibrated scores. Every figure is checked against a direct computation from the model's own probabilities."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
import zipfile

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from app.artifacts.layout import dataset_key, model_key, read_dataset
from app.cli import cli
from finetune_client import Client
from tests.conftest import wait_for_job
from tests.factories import COLORS, image_bytes, text_rows
from worker.training.evaluation import actionable_evaluation

BINS = 15
# Evaluate at step 40 and at the end (step 60); early stopping on val_loss with an unreachable min_delta makes the
# first evaluation the best checkpoint and the last one a checkpoint that is not.
TEXT_HP = {
    "epochs": 10, "batch_size": 8, "learning_rate": 0.003, "seed": 3, "max_length": 16, "eval_every_steps": 40,
    "early_stopping": {"metric": "val_loss", "min_delta": 1000.0, "patience": 5},
}  # fmt: skip


def _contrary(n: int, seed: int) -> list[dict]:
    """Sentences whose sentiment word says the other label: a model that learned the words gets them wrong."""
    flipped = {"positive": "negative", "negative": "positive"}
    return [{"text": r["text"], "label": flipped[r["label"]]} for r in text_rows(n, seed=seed)]


def _text_csv() -> bytes:
    splits = {
        "train": text_rows(24, seed=1),
        "val": text_rows(5, seed=2),
        "test": text_rows(8, seed=3) + _contrary(3, 4),
    }
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label", "split"])
    for split, rows in splits.items():
        for row in rows:
            writer.writerow([row["text"], row["label"], split])
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def text_job(service, key):
    with service.client(key) as client:
        dataset = client.post(
            "/datasets", files={"file": ("r.csv", _text_csv())}, data={"task": "text_classification"}
        ).json()
        job = client.post(
            "/jobs", json={"dataset_id": dataset["id"], "base_model": "tiny-bert", "hyperparameters": TEXT_HP}
        )
        assert job.status_code == 201, job.text
        finished = wait_for_job(client, job.json()["id"])
        assert finished["status"] == "succeeded", finished["error"]
        return finished, dataset


def _split(service, dataset_id: str, split: str) -> list[dict]:
    return [r for r in read_dataset(service.store(), dataset_key(dataset_id)) if r["split"] == split]


def _predict(client: httpx.Client, model_id: str, inputs: dict, labels: list[str], calibrated: bool = False) -> tuple:
    """(probabilities examples x labels in label order, the answer's temperature) from POST /predict."""
    answer = client.post("/predict", json={"model": model_id, "top_k": len(labels), "calibrated": calibrated, **inputs})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    rows = [{p["label"]: p["score"] for p in ranked} for ranked in body["predictions"]]
    return np.array([[row[label] for label in labels] for row in rows]), body["temperature"]


def _ece_and_bins(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, list[int], list[float | None]]:
    """ECE as Guo et al. define it: bins (k/15, (k+1)/15] of top-1 confidence, |accuracy - confidence| by share."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, BINS + 1)
    ece, counts, accuracies = 0.0, [], []
    for lower, upper in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lower) & (confidence <= upper)
        counts.append(int(inside.sum()))
        accuracies.append(float(correct[inside].mean()) if inside.any() else None)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece), counts, accuracies


def _check_against(report: dict, probabilities: np.ndarray, labels: np.ndarray, names: list[str], shown: list):
    """The report's calibration, confused pairs, mistakes and thresholds equal those computed from `probabilities`;
    `shown[i]` is what the report must show of test example i."""
    ece, counts, accuracies = _ece_and_bins(probabilities, labels)
    calibration = report["calibration"]
    assert calibration["num_bins"] == BINS and len(calibration["bins"]) == BINS
    assert calibration["ece"] == pytest.approx(ece, abs=1e-4)
    assert [b["count"] for b in calibration["bins"]] == counts
    for b, accuracy in zip(calibration["bins"], accuracies, strict=True):
        assert b["accuracy"] == (pytest.approx(accuracy, abs=1e-6) if accuracy is not None else None)
    predicted = probabilities.argmax(axis=1)
    assert report["accuracy"] == pytest.approx(float((predicted == labels).mean()), abs=1e-6)

    mistakes = {}
    for t, p in zip(labels, predicted, strict=True):
        if t != p:
            mistakes[(names[t], names[p])] = mistakes.get((names[t], names[p]), 0) + 1
    assert {(c["true_label"], c["predicted_label"]): c["count"] for c in report["confused_pairs"]} == mistakes
    assert [c["count"] for c in report["confused_pairs"]] == sorted(mistakes.values(), reverse=True)

    wrong = np.nonzero(predicted != labels)[0]
    listed = report["misclassified"]
    assert wrong.size > 0, "the contrary examples must be mistaken"
    assert sorted(m["index"] for m in listed) == sorted(wrong.tolist())
    assert [m["score"] for m in listed] == sorted((m["score"] for m in listed), reverse=True)
    for m in listed:
        i = m["index"]
        assert (m["true_label"], m["predicted_label"]) == (names[labels[i]], names[predicted[i]])
        assert m["score"] == pytest.approx(probabilities[i, predicted[i]], abs=1e-4)
        assert m["true_label_score"] == pytest.approx(probabilities[i, labels[i]], abs=1e-4)
        for k, v in shown[i].items():
            assert m[k] == v

    curve = report["thresholds"]
    assert curve["positive_label"] == names[1]
    assert [p["threshold"] for p in curve["points"]] == pytest.approx([k / 20 for k in range(1, 20)])
    for point in curve["points"]:
        chosen, actual = probabilities[:, 1] >= point["threshold"], labels == 1
        if abs(probabilities[:, 1] - point["threshold"]).min() < 1e-4:
            continue  # a score on the threshold itself: rounding decides the side
        assert point["predicted_positive"] == int(chosen.sum())
        hits = int((chosen & actual).sum())
        assert point["precision"] == (pytest.approx(hits / chosen.sum(), abs=1e-6) if chosen.any() else None)
        assert point["recall"] == pytest.approx(hits / actual.sum(), abs=1e-6)


def test_text_report_matches_a_direct_computation(service, client, text_job):
    job, dataset = text_job
    report = client.get(f"/jobs/{job['id']}/report").json()
    names = dataset["labels"]
    test = _split(service, dataset["id"], "test")
    labels = np.array([names.index(r["label"]) for r in test])
    probabilities, temperature = _predict(client, job["model_id"], {"texts": [r["text"] for r in test]}, names)
    assert temperature is None
    assert report["num_examples"] == len(test) and report["per_class"] and report["confusion_matrix"]
    _check_against(report, probabilities, labels, names, [{"text": r["text"]} for r in test])


def test_calibrated_predictions_divide_the_logits_by_the_stored_temperature(service, client, text_job):
    job, dataset = text_job
    report, names = client.get(f"/jobs/{job['id']}/report").json(), dataset["labels"]
    stored = json.loads((service.store().local_dir(model_key(job["model_id"])) / "calibration.json").read_text())
    temperature = report["calibration"]["temperature"]
    assert (
        temperature > 0
        and stored["temperature"] == temperature
        and report["calibration"]["temperature_fitted_on"] == "val"
    )
    model = client.get(f"/models/{job['model_id']}").json()
    assert (
        model["metrics"]["temperature"] == temperature and model["metrics"]["test_ece"] == report["calibration"]["ece"]
    )

    test = _split(service, dataset["id"], "test")
    texts = {"texts": [r["text"] for r in test]}
    raw, _ = _predict(client, job["model_id"], texts, names)
    calibrated, applied = _predict(client, job["model_id"], texts, names, calibrated=True)
    assert applied == temperature
    scaled = np.log(np.clip(raw, 1e-12, None)) / temperature
    expected = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert calibrated == pytest.approx(expected, abs=2e-4)
    assert (calibrated.argmax(axis=1) == raw.argmax(axis=1)).all()
    assert not np.allclose(calibrated, raw, atol=1e-3), "a temperature of 1 would not show the scaling"

    labels = np.array([names.index(r["label"]) for r in test])
    ece_after, counts, _ = _ece_and_bins(calibrated, labels)
    assert report["calibration"]["ece_calibrated"] == pytest.approx(ece_after, abs=1e-4)
    assert [b["count"] for b in report["calibration"]["bins_calibrated"]] == counts

    # The temperature minimises the validation split's negative log-likelihood.
    val = _split(service, dataset["id"], "val")
    val_raw, _ = _predict(client, job["model_id"], {"texts": [r["text"] for r in val]}, names)
    y = np.array([names.index(r["label"]) for r in val])
    log_p = np.log(np.clip(val_raw, 1e-12, None))

    def nll(t: float) -> float:
        z = log_p / t
        return float((np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]).mean())

    assert nll(temperature) <= min(nll(temperature * 1.1), nll(temperature / 1.1)) + 1e-6
    assert report["calibration"]["val_nll_calibrated"] <= report["calibration"]["val_nll"] + 1e-9


def test_report_of_a_checkpoint_that_is_not_the_best(service, client, text_job):
    job, dataset = text_job
    checkpoints = {c["step"]: c for c in client.get(f"/jobs/{job['id']}/checkpoints").json()}
    assert set(checkpoints) == {40, 60} and checkpoints[40]["is_best"] and not checkpoints[60]["is_best"]
    last = checkpoints[60]
    assert last["report_status"] is None

    first = client.get(f"/jobs/{job['id']}/report", params={"checkpoint": last["id"]})
    assert first.status_code == 202, first.text
    assert first.json()["poll"] == first.headers["location"] == f"/jobs/{job['id']}/report?checkpoint={last['id']}"
    report = _poll(client, first.json()["poll"])
    assert report["checkpoint"] == {"id": last["id"], "step": 60, "epoch": last["epoch"], "is_best": False}
    by_step = client.get(f"/jobs/{job['id']}/report", params={"checkpoint": "60"})
    assert by_step.status_code == 200 and by_step.json() == report
    assert {c["step"]: c["report_status"] for c in client.get(f"/jobs/{job['id']}/checkpoints").json()}[60] == "done"

    # The checkpoint's own weights, run here one text at a time, give the figures the report shows.
    folder = service.store().local_dir(model_key(job["model_id"]))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    load_model(model, str(service.store().local_dir(last["storage_key"]) / "model.safetensors"))
    tokenizer, names = AutoTokenizer.from_pretrained(folder), dataset["labels"]
    test = _split(service, dataset["id"], "test")
    with torch.no_grad():
        logits = np.concatenate(
            [
                model(**tokenizer([r["text"]], truncation=True, max_length=16, return_tensors="pt")).logits.numpy()
                for r in test
            ]
        )
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = np.array([names.index(r["label"]) for r in test])
    _check_against(report, probabilities, labels, names, [{"text": r["text"]} for r in test])
    assert report["calibration"]["temperature"] > 0 and report["num_examples"] == len(test)


def test_the_best_checkpoint_answers_the_jobs_report_and_unknown_ones_list_those_that_exist(client, text_job):
    job, _ = text_job
    report = client.get(f"/jobs/{job['id']}/report").json()
    best = client.get(f"/jobs/{job['id']}/report", params={"checkpoint": "40"})
    assert best.status_code == 200
    assert best.json() == {**report, "checkpoint": {**best.json()["checkpoint"], "step": 40, "is_best": True}}
    missing = client.get(f"/jobs/{job['id']}/report", params={"checkpoint": "41"})
    assert missing.status_code == 404
    assert {c["step"] for c in missing.json()["checkpoints"]} == {40, 60}
    assert "step 40, best" in missing.json()["detail"]


def test_another_teams_checkpoint_report_is_not_found(service, other_key, text_job):
    job, dataset = text_job
    with service.client(other_key) as other:
        assert other.get(f"/jobs/{job['id']}/report", params={"checkpoint": "60"}).status_code == 404
        assert other.get(f"/jobs/{job['id']}/report").status_code == 404
        assert (
            other.post("/predict", json={"model": job["model_id"], "texts": ["good"], "calibrated": True}).status_code
            == 404
        )


def test_the_python_client_and_the_cli(service, key, cli_env, text_job):
    job, _ = text_job
    with Client(service.url, key) as api:
        report = api.jobs.report(job["id"], checkpoint=60)
        assert report.checkpoint is not None and report.checkpoint["step"] == 60
        assert report.calibration is not None and len(report.calibration.bins) == 15
        assert report.misclassified and report.misclassified[0].text
        best = api.jobs.report(job["id"])
        raw = api.predict(["good film"], model=job["model_id"], top_k=2)
        calibrated = api.predict(["good film"], model=job["model_id"], top_k=2, calibrated=True)
    assert raw.temperature is None and calibrated.temperature == best.calibration.temperature
    assert [p.score for p in raw.predictions[0]] != [p.score for p in calibrated.predictions[0]]
    result = CliRunner().invoke(cli, ["jobs", "report", job["id"], "--checkpoint", "60"], env=cli_env)
    assert result.exit_code == 0, result.output
    assert "expected calibration error" in result.output and "most confident mistakes" in result.output
    answer = CliRunner().invoke(
        cli, ["predict", "--model", job["model_id"], "--calibrated", "--json", "good film"], env=cli_env
    )
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.stdout)["temperature"] == best.calibration.temperature


def _poll(client: httpx.Client, url: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(url)
        if answer.status_code == 200:
            return answer.json()
        assert answer.status_code == 202, answer.text
        time.sleep(0.5)
    raise TimeoutError(f"{url} still computing after {timeout}s")


def _image_zip() -> bytes:
    """train/val/test folders of red and blue squares; three blue squares filed under test/red."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in (("train", 12), ("val", 4), ("test", 4)):
            for c, (name, color) in enumerate(COLORS.items()):
                for i in range(n):
                    zf.writestr(f"{split}/{name}/{i:03d}.png", image_bytes(color, seed=100 * len(split) + 1000 * c + i))
        for i in range(3):
            zf.writestr(f"test/red/x{i}.png", image_bytes(COLORS["blue"], seed=500 + i))
    return buf.getvalue()


def test_image_report_references_images_a_client_can_fetch(service, client, other_key):
    dataset = client.post(
        "/datasets", files={"file": ("c.zip", _image_zip(), "application/zip")}, data={"task": "image_classification"}
    ).json()
    hp = {"epochs": 3, "batch_size": 8, "learning_rate": 0.003, "seed": 1}
    job = client.post(
        "/jobs", json={"dataset_id": dataset["id"], "base_model": "tiny-vit", "hyperparameters": hp}
    ).json()
    job = wait_for_job(client, job["id"])
    assert job["status"] == "succeeded", job["error"]
    report = client.get(f"/jobs/{job['id']}/report").json()
    names, test = dataset["labels"], _split(service, dataset["id"], "test")
    images = [base64.b64encode(r["image"]).decode() for r in test]
    probabilities, _ = _predict(client, job["model_id"], {"images": images}, names)
    labels = np.array([names.index(r["label"]) for r in test])
    shown = [
        {"image": r["image_entry"], "image_url": f"/datasets/{dataset['id']}/images/{r['image_entry']}"} for r in test
    ]
    _check_against(report, probabilities, labels, names, shown)

    url = report["misclassified"][0]["image_url"]
    image = client.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    index = report["misclassified"][0]["index"]
    original = Image.open(io.BytesIO(test[index]["image"])).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(image.content))), np.asarray(original))
    assert client.get(f"/datasets/{dataset['id']}/images/9999999").status_code == 404
    assert client.get(f"/datasets/{dataset['id']}/images/..%2Fx").status_code in (404, 422)
    with service.client(other_key) as other:
        assert other.get(url).status_code == 404


def test_calibrated_predict_needs_a_fitted_temperature(service, client, text_dataset):
    """A model without calibration.json (registered before calibration existed) answers calibrated requests with a
    422 that says what to send instead, and raw ones as before."""
    hp = {"epochs": 1, "batch_size": 16, "max_steps": 2, "max_length": 16}
    job = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    job = wait_for_job(client, job.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    key = f"{model_key(job['model_id'])}/calibration.json"
    assert service.store().exists(key)
    service.store().delete_prefix(key)
    refused = client.post("/predict", json={"model": job["model_id"], "texts": ["good"], "calibrated": True})
    assert refused.status_code == 422 and "'calibrated': false" in refused.json()["detail"]
    raw = client.post("/predict", json={"model": job["model_id"], "texts": ["good"]})
    assert raw.status_code == 200 and raw.json()["temperature"] is None


def test_three_classes_have_no_threshold_curve_and_no_validation_split_no_temperature():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 4.0]])
    labels = np.array([0, 2, 1, 2])
    shown = [{"text": t} for t in "wxyz"]
    result = actionable_evaluation(logits, labels, np.zeros((0, 3)), np.zeros(0, dtype=int), ["a", "b", "c"], shown)
    assert result["thresholds"] is None
    assert result["calibration"]["temperature"] is None and result["calibration"]["ece_calibrated"] is None
    assert result["confused_pairs"] == [
        {"true_label": "b", "predicted_label": "a", "count": 1},
        {"true_label": "c", "predicted_label": "b", "count": 1},
    ]
    assert [m["index"] for m in result["misclassified"]] == [1, 2]  # the more confident mistake first
    assert result["misclassified"][0]["text"] == "x"
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert result["calibration"]["ece"] == pytest.approx(_ece_and_bins(probabilities, labels)[0], abs=1e-6)
