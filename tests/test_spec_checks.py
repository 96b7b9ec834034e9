"""Specs that could never train are refused at submit with a 422 that says what to change, and nothing is stored."""

from __future__ import annotations

import httpx
import pytest

from app.jobs.spec_checks import max_positions
from tests.factories import text_csv, text_rows


def _refused(client: httpx.Client, body: dict) -> str:
    before = {j["id"] for j in client.get("/jobs", params={"limit": 200}).json()["items"]}
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    after = {j["id"] for j in client.get("/jobs", params={"limit": 200}).json()["items"]}
    assert after == before  # nothing stored
    return answer.json()["detail"]


def test_max_length_beyond_the_models_positions(client, text_dataset):
    """The tiny BERT has 64 positions: 65 tokens cannot be read; 64 can."""
    detail = _refused(
        client, {"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": {"max_length": 65}}
    )
    assert "max_length 65" in detail and "set max_length to 64 or less" in detail
    ok = client.post(
        "/jobs",
        json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": {"max_length": 64,
              "max_steps": 1, "epochs": 1}},
    )  # fmt: skip
    assert ok.status_code == 201, ok.text
    client.post(f"/jobs/{ok.json()['id']}/cancel")
    default = client.post(
        "/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": {"max_steps": 1}}
    )  # the default (128) is fitted to the model, and the spec says why
    assert default.status_code == 201, default.text
    assert default.json()["hyperparameters"]["max_length"] == 64
    assert "at most 64 tokens" in default.json()["hyperparameters"]["auto"]["max_length"]
    client.post(f"/jobs/{default.json()['id']}/cancel")


def test_a_dataset_without_val_or_test_examples(client):
    """Two examples a class: nothing can be held out, so there is no validation split to stop on."""
    rows = text_rows(per_class=2)
    upload = client.post("/datasets", files={"file": ("two.csv", text_csv(rows))}, data={"task": "text_classification"})
    assert upload.status_code == 201, upload.text
    assert sum(upload.json()["counts"]["val"].values()) == 0
    detail = _refused(client, {"dataset_id": upload.json()["id"], "base_model": "tiny-bert"})
    assert "no val examples" in detail and "at least 3 examples of each class" in detail


@pytest.mark.parametrize(
    ("config", "positions"),
    [
        ({"model_type": "bert", "max_position_embeddings": 512}, 512),
        ({"model_type": "roberta", "max_position_embeddings": 514}, 512),
        ({"model_type": "gpt2", "n_positions": 1024}, 1024),
        ({"model_type": "bert"}, None),
        ({"model_type": "bert", "max_position_embeddings": "many"}, None),
    ],
)
def test_max_positions_from_config(config, positions):
    assert max_positions(config) == positions
