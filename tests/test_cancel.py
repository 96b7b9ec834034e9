"""Cancelling: a running job stops at a step boundary; a queued job never starts."""

from __future__ import annotations

import time

from tests.conftest import wait_for_job
from tests.factories import text_csv

LONG = {"epochs": 1000, "batch_size": 8, "early_stopping": None}


def _submit(client, dataset_id: str, hyperparameters: dict) -> str:
    answer = client.post(
        "/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": hyperparameters}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_cancel_running_and_queued_jobs(client):
    dataset_id = client.post(
        "/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"}
    ).json()["id"]
    running_id = _submit(client, dataset_id, LONG)
    queued_id = _submit(client, dataset_id, LONG)
    running = wait_for_job(client, running_id, {"running"})
    assert client.get(f"/jobs/{queued_id}").json()["status"] == "queued"

    cancelled_queued = client.post(f"/jobs/{queued_id}/cancel").json()
    assert cancelled_queued["status"] == "cancelled"

    deadline = time.monotonic() + 60
    while client.get(f"/jobs/{running_id}").json()["step"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.post(f"/jobs/{running_id}/cancel").json()["cancel_requested"] is True
    running = wait_for_job(client, running_id, timeout=60)
    assert running["status"] == "cancelled"
    assert 3 <= running["step"] < running["total_steps"]
    assert running["finished_at"] is not None
    kinds = [e["kind"] for e in client.get(f"/jobs/{running_id}/events").json()["items"]]
    assert "cancel_requested" in kinds and kinds[-1] == "cancelled"

    # A job submitted after the queued one finishes only after the worker has seen the cancelled job's message.
    marker = wait_for_job(client, _submit(client, dataset_id, {"epochs": 1, "max_steps": 1}))
    assert marker["status"] == "succeeded", marker["error"]
    queued = client.get(f"/jobs/{queued_id}").json()
    assert queued["status"] == "cancelled"
    assert queued["attempt"] == 0 and queued["started_at"] is None
    assert "claimed" not in [e["kind"] for e in client.get(f"/jobs/{queued_id}/events").json()["items"]]

    again = client.post(f"/jobs/{running_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    finished = client.post(f"/jobs/{marker['id']}/cancel")
    assert finished.status_code == 409
    assert "already succeeded" in finished.json()["detail"]


def test_dataset_in_use_cannot_be_deleted(client):
    dataset_id = client.post(
        "/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"}
    ).json()["id"]
    job_id = _submit(client, dataset_id, LONG)
    answer = client.delete(f"/datasets/{dataset_id}")
    assert answer.status_code == 409
    assert f"/jobs/{job_id}/cancel" in answer.json()["detail"]
    client.post(f"/jobs/{job_id}/cancel")
    wait_for_job(client, job_id, timeout=120)
    assert client.delete(f"/datasets/{dataset_id}").status_code == 204
