"""GET /metrics: scraped around a real job, a cancelled one and a few predictions, the counters move by exactly what
was done; the gauges show the busy worker; no label carries a team's name or any id."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.main import create_app
from app.migrate import upgrade

Snapshot = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LONG = {"epochs": 1000, "batch_size": 8, "early_stopping": None}


def scrape(service) -> tuple[Snapshot, str]:
    answer = httpx.get(f"{service.url}/metrics", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    return samples, answer.text


def value(snapshot: Snapshot, name: str, **labels: str) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Snapshot, after: Snapshot, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


class CountingClient:
    """The test's requests, counted by (method, route template, status) as the API should count them."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.counts: dict[tuple[str, str, int], int] = {}

    def call(self, method: str, template: str, path: str, **kwargs) -> httpx.Response:
        answer = self.client.request(method, path, **kwargs)
        key = (method, template, answer.status_code)
        self.counts[key] = self.counts.get(key, 0) + 1
        return answer

    def job(self, job_id: str) -> dict:
        return self.call("GET", "/jobs/{job_id}", f"/jobs/{job_id}").json()

    def wait(self, job_id: str, done, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while not done(job := self.job(job_id)):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        return job


def wait_until_idle(service) -> Snapshot:
    """A scrape taken when no job of any earlier test is queued or running (their ends would move the gauges)."""
    deadline = time.monotonic() + 180
    while True:
        snapshot, _ = scrape(service)
        if value(snapshot, "finetune_jobs", state="queued") + value(snapshot, "finetune_jobs", state="running") == 0:
            return snapshot
        assert time.monotonic() < deadline, "jobs of earlier tests still running"
        time.sleep(0.5)


def test_counters_move_by_what_was_done(service, key, text_dataset):
    before = wait_until_idle(service)
    with service.client(key) as raw:
        client = CountingClient(raw)
        submit = {"dataset_id": text_dataset, "base_model": "tiny-bert"}
        busy = client.call("POST", "/jobs", "/jobs", json={**submit, "hyperparameters": LONG}).json()["id"]
        client.wait(busy, lambda job: job["step"] >= 3)

        deadline = time.monotonic() + 60  # until the worker's first flush of samples_per_s rows
        while True:
            during, _ = scrape(service)
            speeds = [v for (name, _), v in during.items() if name == "finetune_worker_samples_per_second"]
            if speeds:
                break
            assert time.monotonic() < deadline
            time.sleep(0.3)
        ages = {labels: v for (name, labels), v in during.items() if name == "finetune_worker_heartbeat_age_seconds"}
        assert len(ages) == 1 and 0 <= next(iter(ages.values())) < service.settings.lease_seconds, ages
        assert speeds and speeds[0] > 0
        assert value(during, "finetune_workers_busy") == 1
        assert value(during, "finetune_jobs", state="running") == 1

        assert client.call("POST", "/jobs/{job_id}/cancel", f"/jobs/{busy}/cancel").status_code == 200
        client.wait(busy, lambda job: job["status"] == "cancelled")
        quick = client.call("POST", "/jobs", "/jobs", json={**submit, "hyperparameters": {"max_steps": 2}}).json()
        model_id = client.wait(quick["id"], lambda job: job["status"] == "succeeded")["model_id"]
        for n in (1, 2, 3):
            texts = [f"a fine film, part {i}" for i in range(n)]
            answer = client.call("POST", "/predict", "/predict", json={"model": model_id, "texts": texts})
            assert answer.status_code == 200, answer.text
        assert client.call("GET", "/jobs/{job_id}", "/jobs/nope").status_code == 404
        # Refused before routing (by the request-limits middleware): still counted under the route's template.
        wrong = {"Authorization": "Bearer ftk_wrong"}
        assert client.call("POST", "/predict", "/predict", json={"texts": ["x"]}, headers=wrong).status_code == 401
        assert client.call("POST", "/jobs/{job_id}/cancel", "/jobs/x/cancel", headers=wrong).status_code == 401
    after, text = scrape(service)

    for (method, route, status), count in client.counts.items():
        labels = {"method": method, "route": route, "status": str(status)}
        assert moved(before, after, "finetune_http_requests_total", **labels) == count, labels
        assert moved(before, after, "finetune_http_request_duration_seconds_count", **labels) == count, labels
    assert client.counts[("POST", "/predict", 200)] == 3
    assert moved(before, after, "finetune_http_request_duration_seconds_sum", method="POST", route="/predict",
                 status="200") > 0  # fmt: skip
    # Three requests, one at a time: three forward passes of 1, 2 and 3 inputs, each request waited once.
    assert moved(before, after, "finetune_predict_batch_inputs_count") == 3
    assert moved(before, after, "finetune_predict_batch_inputs_sum") == 6
    assert moved(before, after, "finetune_predict_batch_requests_sum") == 3
    assert moved(before, after, "finetune_predict_queue_wait_seconds_count") == 3
    assert moved(before, after, "finetune_jobs", state="succeeded") == 1
    assert moved(before, after, "finetune_jobs", state="cancelled") == 1
    assert value(after, "finetune_job_queue_depth") == value(after, "finetune_jobs", state="queued") == 0
    assert value(after, "finetune_database_up") == 1
    # No team's data in any label or value name: not its name, key, dataset, jobs or model.
    for secret in ("team-a", key, text_dataset, busy, quick["id"], model_id, "nope"):
        assert secret not in text, secret


def test_metrics_token_when_set(tmp_path: Path):
    settings = Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'm.db'}", metrics_token="s3cret")
    upgrade(settings.database_url)
    with TestClient(create_app(settings)) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and "FINETUNE_METRICS_TOKEN" in refused.json()["detail"]
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert answer.status_code == 200
        assert "finetune_database_up 1.0" in answer.text
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_json_logs_carry_the_request_id(tmp_path: Path, capsys):
    """FINETUNE_LOG_FORMAT=json: a line logged while answering a request names that request's id. Here the
    scrape's database cannot be opened, so the collector logs a warning (and the scrape still answers)."""
    settings = Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'missing' / 'm.db'}", log_format="json")
    try:
        with TestClient(create_app(settings)) as client:
            answer = client.get("/metrics", headers={"X-Request-ID": "scrape-42"})
        assert answer.status_code == 200 and "finetune_database_up 0.0" in answer.text
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        warning = next(line for line in lines if "did not answer the scrape" in line["message"])
        assert warning["request_id"] == "scrape-42" and warning["level"] == "warning"
        assert warning["logger"] == "app.observability.collectors"
    finally:
        configure_text_logging()


def configure_text_logging() -> None:
    """Undo the JSON handler for the rest of the test session."""
    logging.getLogger().handlers = []


def test_the_access_log_is_off_unless_asked_for(tmp_path: Path) -> None:
    access = logging.getLogger("uvicorn.access")
    try:
        create_app(Settings(var_dir=tmp_path))
        assert access.disabled and not access.isEnabledFor(logging.CRITICAL)
        create_app(Settings(var_dir=tmp_path, access_log=True))
        assert not access.disabled
    finally:
        access.disabled = False
