"""Mean pooling for sentence-embedding encoders: what "auto" picks, the forward it runs, and that every place a
fine-tuned model is loaded (serving, int8, ONNX, plain transformers plus its config) computes the same thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, RobertaConfig

from app.artifacts.layout import model_key
from app.jobs.adapters import model_skeleton
from app.jobs.defaults import apply_defaults
from app.jobs.schemas import Hyperparameters
from app.tasktypes.pooling import apply_saved_pooling, mean_pooling_unsupported, use_pooling
from app.tasktypes.types import TaskType
from tests.conftest import wait_for_job
from tests.factories import text_csv

TEXTS = ["good", "the movie was a really boring and dull film", "great fun"]


def manual_mean_logits(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """Each text alone (no padding): the classifier over the plain mean of its token vectors."""
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer([text], return_tensors="pt")
            hidden = model.base_model(**ids)[0]
            rows.append(model.classifier(hidden.mean(dim=1))[0])
    return torch.stack(rows)


def test_auto_pooling_reads_the_first_token_and_says_why():
    hp = apply_defaults(Hyperparameters(), TaskType.text_classification, 500)
    assert hp.pooling == "cls" and hp.auto["pooling"].startswith("cls: ")
    assert apply_defaults(hp, TaskType.text_classification, 500).pooling == "cls"  # idempotent
    chosen = apply_defaults(Hyperparameters(pooling="mean"), TaskType.text_classification, 500)
    assert chosen.pooling == "mean" and "pooling" not in chosen.auto
    image = apply_defaults(Hyperparameters(), TaskType.image_classification, 500)
    assert image.pooling == "auto" and "pooling" not in image.auto


def test_mean_pooled_forward_ignores_padding_and_matches_the_plain_mean(models_dir):
    folder = models_dir / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    cls_logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits.detach()
    use_pooling(model, "mean")
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].sum(1).tolist() != [batch["attention_mask"].shape[1]] * 3  # some rows padded
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, manual_mean_logits(model, tokenizer, TEXTS), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits, cls_logits, atol=1e-3)  # it is not the [CLS] head
    use_pooling(model, "cls")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, cls_logits)
    assert model.config.classifier_pooling == "cls"


def test_a_saved_mean_pooled_model_loads_the_same_everywhere(models_dir, tmp_path):
    from app.inference.cache import load_served_model
    from app.inference.runtimes import INT8, export_onnx, onnx_forward
    from app.tasktypes.common import Preprocessing
    from app.tasktypes.text import collate

    folder = models_dir / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    use_pooling(model, "mean")
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    prep = Preprocessing(task="text_classification", labels=["LABEL_0", "LABEL_1"], max_length=32)
    prep.save(saved)
    assert json.loads((saved / "config.json").read_text())["classifier_pooling"] == "mean"
    expected = manual_mean_logits(model, tokenizer, TEXTS)
    batch = collate(tokenizer, tokenizer(TEXTS)["input_ids"])
    plain = apply_saved_pooling(AutoModelForSequenceClassification.from_pretrained(saved).eval())
    served = load_served_model("m", saved)
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(served.model(**batch).logits, expected, atol=1e-5, rtol=1e-4)
        quantized = load_served_model("m", saved, INT8).model(**batch).logits
    assert quantized.argmax(-1).tolist() == expected.argmax(-1).tolist() or torch.allclose(quantized, expected, 0.1)
    export_onnx(served.model, prep, batch, tmp_path / "model.onnx")
    from_onnx = onnx_forward(tmp_path / "model.onnx", 1)(batch)
    torch.testing.assert_close(torch.as_tensor(from_onnx), expected, atol=1e-4, rtol=1e-3)


def test_mean_pooling_needs_a_linear_head_over_the_hidden_states(models_dir):
    assert mean_pooling_unsupported(model_skeleton(models_dir / "tiny-bert", TaskType.text_classification, 3)) is None
    roberta = RobertaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with torch.device("meta"):
        skeleton = AutoModelForSequenceClassification.from_config(roberta)
    why = mean_pooling_unsupported(skeleton)
    assert why is not None and "one linear layer" in why
    with pytest.raises(ValueError, match='use pooling "cls"'):
        use_pooling(skeleton, "mean")


def upload(client, task: str = "text_classification") -> str:
    dataset = client.post("/datasets", files={"file": ("r.csv", text_csv(), "text/csv")}, data={"task": task})
    assert dataset.status_code == 201, dataset.text
    return dataset.json()["id"]


def test_a_mean_pooled_job_pools_from_training_to_predict_and_as_a_base_model(service, client):
    hp = {"max_steps": 6, "batch_size": 8, "max_length": 16, "learning_rate": 3e-3, "seed": 3, "pooling": "mean"}
    dataset = upload(client)
    submitted = client.post("/jobs", json={"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": hp})
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["hyperparameters"]["pooling"] == "mean"
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    folder = Path(service.store().local_dir(model_key(job["model_id"])))
    assert json.loads((folder / "config.json").read_text())["classifier_pooling"] == "mean"
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    expected = torch.softmax(manual_mean_logits(model, tokenizer, TEXTS), dim=-1)
    answer = client.post("/predict", json={"model": job["model_id"], "texts": TEXTS, "top_k": 2})
    assert answer.status_code == 200, answer.text
    temperature = answer.json()["temperature"] or 1.0
    expected = torch.softmax(torch.log(expected) / temperature, dim=-1)
    labels = model.config.id2label
    for ranked, probs in zip(answer.json()["predictions"], expected, strict=True):
        scores = {p["label"]: p["score"] for p in ranked}
        assert scores == pytest.approx({labels[i]: float(p) for i, p in enumerate(probs)}, abs=1e-3)
    # Fine-tuning that model again keeps its pooling unless the spec says otherwise.
    again = {"dataset_id": dataset, "base_model": job["model_id"], "hyperparameters": {"max_steps": 1}}
    kept = client.post("/jobs", json=again).json()
    assert kept["hyperparameters"]["pooling"] == "mean"
    assert "was fine-tuned" in kept["hyperparameters"]["auto"]["pooling"]
    told = client.post("/jobs", json={**again, "hyperparameters": {"max_steps": 1, "pooling": "cls"}}).json()
    assert told["hyperparameters"]["pooling"] == "cls"
    for queued in (kept, told):
        assert wait_for_job(client, queued["id"])["status"] == "succeeded"


def test_pooling_is_for_text_and_a_chosen_mean_needs_a_model_that_can(client):
    bert = client.post(
        "/jobs", json={"dataset_id": upload(client), "base_model": "tiny-bert", "hyperparameters": {"max_steps": 1}}
    )
    assert bert.status_code == 201, bert.text
    assert bert.json()["hyperparameters"]["pooling"] == "cls"
    wait_for_job(client, bert.json()["id"])
    from tests.factories import image_zip

    images = client.post(
        "/datasets", files={"file": ("c.zip", image_zip(per_class=10), "application/zip")},
        data={"task": "image_classification"},
    )  # fmt: skip
    assert images.status_code == 201, images.text
    refused = client.post(
        "/jobs",
        json={"dataset_id": images.json()["id"], "base_model": "tiny-vit", "hyperparameters": {"pooling": "mean"}},
    )
    assert refused.status_code == 422
    assert "text models only" in refused.text and "leave pooling out" in refused.text
