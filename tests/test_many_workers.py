"""Two and three workers against PostgreSQL and Redis: every job runs exactly once, concurrently, with all its
metrics, though each message only wakes a worker that then claims the best job of its pool (app/jobs/scheduling.py)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.conftest import running_service, wait_for_job
from tests.factories import text_csv
from tests.stacks import production_stack

pytestmark = pytest.mark.production
HP = {"epochs": 6, "batch_size": 8, "early_stopping": None}


@pytest.fixture(scope="module", params=[2, 3], ids=["two-workers", "three-workers"])
def workers(request, tmp_path_factory, models_dir):
    # Its own database and Redis database number, so the suite's worker cannot take these jobs.
    with (
        production_stack("redis://127.0.0.1:6379/14") as stack,
        running_service(tmp_path_factory.mktemp("var-workers"), models_dir, stack, workers=request.param) as service,
    ):
        yield service, request.param


def _interval(job: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(job["started_at"]), datetime.fromisoformat(job["finished_at"])


def test_jobs_run_once_each_concurrently_on_every_worker(workers):
    service, n = workers
    jobs_n = 2 * n
    with service.client(service.new_key("busy-team")) as client:
        deadline = time.monotonic() + 180
        while len(client.get("/pools").json()[0]["workers"]) < n and time.monotonic() < deadline:
            time.sleep(0.5)  # every worker alive and consuming before the jobs come
        dataset = client.post("/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"})
        body = {"dataset_id": dataset.json()["id"], "base_model": "tiny-bert", "hyperparameters": HP}
        ids = [client.post("/jobs", json=body).json()["id"] for _ in range(jobs_n)]
        jobs = [wait_for_job(client, job_id, timeout=300) for job_id in ids]

        for job in jobs:
            assert job["status"] == "succeeded", job["error"]
            assert job["attempt"] == 1
            events = client.get(f"/jobs/{job['id']}/events").json()["items"]
            assert [e["kind"] for e in events].count("claimed") == 1
            losses = client.get(f"/jobs/{job['id']}/metrics", params={"name": "train_loss", "limit": 10000}).json()
            assert [m["step"] for m in losses["items"]] == list(range(1, job["total_steps"] + 1))
            val = client.get(f"/jobs/{job['id']}/metrics", params={"name": "val_loss"}).json()["items"]
            assert len(val) == HP["epochs"]

        claimed_by = {
            job["id"]: next(
                e["message"] for e in client.get(f"/jobs/{job['id']}/events").json()["items"] if e["kind"] == "claimed"
            )
            for job in jobs
        }
        claimers = {message.split(" ")[2] for message in claimed_by.values()}
        assert len(claimers) == n, claimed_by
        overlapping = [
            (a["id"], b["id"])
            for i, a in enumerate(jobs)
            for b in jobs[i + 1 :]
            if _interval(a)[0] < _interval(b)[1] and _interval(b)[0] < _interval(a)[1]
        ]
        assert overlapping, "no two jobs ran at the same time"
        assert len(client.get("/models").json()["items"]) == jobs_n
