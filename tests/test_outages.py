"""Restarting the real Redis and PostgreSQL servers while jobs run and wait: every job finishes exactly once."""

from __future__ import annotations

import time

import pytest

from tests.conftest import running_service, wait_for_job
from tests.factories import text_csv, text_rows
from tests.servers import start_postgres, start_redis, stop_postgres, stop_redis
from tests.stacks import production_stack

pytestmark = pytest.mark.production
SETTINGS = {
    "FINETUNE_LEASE_SECONDS": "60",
    "FINETUNE_HEARTBEAT_SECONDS": "1",
    "FINETUNE_REAPER_INTERVAL_SECONDS": "1",
    "FINETUNE_REQUEUE_AFTER_SECONDS": "3",
}
HP = {"epochs": 1, "batch_size": 8, "eval_every_steps": 20, "early_stopping": None, "max_length": 16}


@pytest.fixture
def outage_service(tmp_path, models_dir):
    try:
        with (
            production_stack("redis://127.0.0.1:6379/12") as stack,
            running_service(tmp_path, models_dir, stack, settings=SETTINGS) as service,
            service.client(service.new_key("outage-team")) as client,
        ):
            upload = {"file": ("r.csv", text_csv(text_rows(300, seed=2)))}
            dataset = client.post("/datasets", files=upload, data={"task": "text_classification"})
            yield client, dataset.json()["id"]
    finally:
        start_redis()
        start_postgres()


def _submit(client, dataset_id: str) -> str:
    answer = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": HP})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _assert_ran_exactly_once(client, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job = wait_for_job(client, job_id, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        kinds = [e["kind"] for e in client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]]
        assert kinds.count("succeeded") == 1
        steps = [
            m["step"]
            for m in client.get(f"/jobs/{job_id}/metrics", params={"name": "train_loss", "limit": 10000}).json()[
                "items"
            ]
        ]
        assert steps == list(range(1, job["total_steps"] + 1)), job_id
    models = client.get("/models", params={"limit": 200}).json()["items"]
    assert sorted(m["job_id"] for m in models) == sorted(job_ids)


def test_redis_restart_loses_the_queue_but_no_job(outage_service):
    client, dataset_id = outage_service
    job_ids = [_submit(client, dataset_id) for _ in range(3)]
    wait_for_job(client, job_ids[0], {"running"})
    stop_redis()
    during = _submit(client, dataset_id)  # accepted while the broker is down; sent later
    kinds = [e["kind"] for e in client.get(f"/jobs/{during}/events").json()["items"]]
    assert "enqueue_failed" in kinds
    time.sleep(2)
    start_redis()
    _assert_ran_exactly_once(client, [*job_ids, during])


def test_postgres_restart_api_answers_503_then_recovers(outage_service):
    client, dataset_id = outage_service
    job_ids = [_submit(client, dataset_id) for _ in range(2)]
    wait_for_job(client, job_ids[0], {"running"})
    stop_postgres()
    try:
        down = client.get("/jobs")
        assert down.status_code == 503
        assert down.headers["content-type"] == "application/problem+json"
        assert "retry" in down.json()["detail"].lower()
        time.sleep(3)
    finally:
        start_postgres()
    deadline = time.monotonic() + 60
    while client.get("/jobs").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover after PostgreSQL came back"
        time.sleep(0.5)
    _assert_ran_exactly_once(client, job_ids)
