"""A service shared by many teams: per-team limits (429 + Retry-After), idempotent creates, freeing space by deleting
jobs and models, GET /usage, and a predict cache one team cannot take over."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from app import processes
from app.artifacts.layout import job_key, model_key
from app.inference.cache import ModelCache
from tests.conftest import Service, wait_for_job
from tests.factories import text_csv, text_rows

QUICK = {"epochs": 1, "batch_size": 16, "max_steps": 2, "max_length": 16}
SLOW = {"epochs": 1, "batch_size": 1, "max_steps": 100000, "max_length": 16}


def _limits(service: Service, team: str, *args: str) -> dict:
    out = subprocess.run(
        processes.cli_command("teams", "limits", "--team", team, *args),
        env=service.env, cwd=processes.ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def team(service: Service) -> tuple[str, str]:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    return name, service.new_key(name)


def _upload(client, rows=None, headers=None):
    return client.post(
        "/datasets",
        files={"file": ("r.csv", text_csv(rows))},
        data={"task": "text_classification"},
        headers=headers or {},
    )


def test_idempotent_job_submission(service: Service, team: tuple[str, str]) -> None:
    with service.client(team[1]) as client:
        dataset = _upload(client).json()["id"]
        body = {"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": QUICK}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = client.post("/jobs", json=body, headers=key)
        again = client.post("/jobs", json=body, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        other = client.post("/jobs", json={**body, "hyperparameters": {**QUICK, "seed": 7}}, headers=key)
        assert other.status_code == 409 and other.headers["content-type"] == "application/problem+json"
        assert "different request" in other.json()["detail"]
        fresh = client.post("/jobs", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
        assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
        ids = [j["id"] for j in client.get("/jobs", params={"limit": 100}).json()["items"]]
        assert sorted(ids) == sorted([first.json()["id"], fresh.json()["id"]])
        bad = client.post("/jobs", json=body, headers={"Idempotency-Key": "has spaces"})
        assert bad.status_code == 422
        for job in (first, fresh):
            wait_for_job(client, job.json()["id"])


def test_idempotent_dataset_upload(service: Service, team: tuple[str, str]) -> None:
    with service.client(team[1]) as client:
        before = len(client.get("/datasets", params={"limit": 100}).json()["items"])
        key = {"Idempotency-Key": "upload-1"}
        first, again = _upload(client, headers=key), _upload(client, headers=key)
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
        changed = _upload(client, rows=text_rows(per_class=12, seed=3), headers=key)
        assert changed.status_code == 409
        assert len(client.get("/datasets", params={"limit": 100}).json()["items"]) == before + 1


def test_active_jobs_limit_is_429_with_retry_after(service: Service) -> None:
    name = f"limited-{uuid.uuid4().hex[:8]}"
    key = service.new_key(name)
    limits = _limits(service, name, "--active-jobs", "1")
    assert limits["active_jobs"] == {"used": 0, "limit": 1}
    with service.client(key) as client:
        dataset = _upload(client).json()["id"]
        body = {"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": SLOW}
        running = client.post("/jobs", json=body)
        assert running.status_code == 201
        refused = client.post("/jobs", json=body)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["Retry-After"]) > 0
        assert "active jobs: 1" in refused.json()["detail"]
        assert client.get("/usage").json()["active_jobs"] == {"used": 1, "limit": 1}
        client.post(f"/jobs/{running.json()['id']}/cancel")
        wait_for_job(client, running.json()["id"])
        assert client.post("/jobs", json={**body, "hyperparameters": QUICK}).status_code == 201


def test_storage_limit_and_freeing_space(service: Service) -> None:
    """A team at its storage limit is told so, deletes a job and a model, and has the space back."""
    name = f"storage-{uuid.uuid4().hex[:8]}"
    key = service.new_key(name)
    with service.client(key) as client:
        dataset = _upload(client).json()
        job = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": "tiny-bert", "hyperparameters":
                                         QUICK}).json()  # fmt: skip
        done = wait_for_job(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        usage = client.get("/usage").json()["storage_bytes"]
        assert usage["datasets"] == dataset["size_bytes"]
        assert usage["models"] > 0 and usage["checkpoints"] > 0
        assert usage["used"] == usage["datasets"] + usage["models"] + usage["checkpoints"]

        _limits(service, name, "--storage-mb", "1")
        big = [{"text": f"{r['text']} " + "filler " * 80, "label": r["label"]} for r in text_rows(per_class=1000)]
        refused = _upload(client, rows=big)  # about 1.3 MB: more than the 1 MB limit leaves
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "limit (storage)" in refused.json()["detail"] and "GET /usage" in refused.json()["detail"]
        assert len(client.get("/datasets").json()["items"]) == 1  # nothing stored

        model_id = done["model_id"]
        client.put("/aliases/live", json={"model_id": model_id, "force": True})
        busy = client.delete(f"/models/{model_id}")
        assert busy.status_code == 409 and "alias 'live'" in busy.json()["detail"]
        assert service.stored_keys(model_key(model_id)) and service.stored_keys(job_key(job["id"]))

        assert client.delete(f"/jobs/{job['id']}").status_code == 204
        assert client.get(f"/jobs/{job['id']}").status_code == 404
        assert not service.stored_keys(job_key(job["id"]))
        assert client.get(f"/models/{model_id}").status_code == 200  # the model outlives its job
        after_job = client.get("/usage").json()["storage_bytes"]
        assert after_job["checkpoints"] == 0 and after_job["models"] == usage["models"]


def test_deleting_a_model_after_its_alias_moves(service: Service, team: tuple[str, str]) -> None:
    with service.client(team[1]) as client:
        dataset = _upload(client).json()["id"]
        jobs = [
            client.post("/jobs", json={"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": QUICK})
            for _ in range(2)
        ]
        first, second = (wait_for_job(client, j.json()["id"])["model_id"] for j in jobs)
        client.put("/aliases/prod", json={"model_id": first, "force": True})
        assert client.delete(f"/models/{first}").status_code == 409
        client.put("/aliases/prod", json={"model_id": second, "force": True})
        assert client.post("/predict", json={"model": first, "texts": ["good"]}).status_code == 200
        assert client.delete(f"/models/{first}").status_code == 204
        assert client.get(f"/models/{first}").status_code == 404
        assert not service.stored_keys(model_key(first))
        assert client.post("/predict", json={"model": first, "texts": ["good"]}).status_code == 404
        assert client.post("/predict", json={"model": "prod", "texts": ["good"]}).status_code == 200


def test_unfinished_jobs_cannot_be_deleted(service: Service, team: tuple[str, str]) -> None:
    with service.client(team[1]) as client:
        dataset = _upload(client).json()["id"]
        job = client.post("/jobs", json={"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": SLOW})
        refused = client.delete(f"/jobs/{job.json()['id']}")
        assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
        client.post(f"/jobs/{job.json()['id']}/cancel")
        wait_for_job(client, job.json()["id"])
        assert client.delete(f"/jobs/{job.json()['id']}").status_code == 204


def test_one_team_cannot_take_over_the_predict_cache(service: Service, team: tuple[str, str]) -> None:
    """Team A keeps two hot models loaded while team B loads model after model into a 3-slot cache."""
    with service.client(team[1]) as client:
        dataset = _upload(client).json()["id"]
        job = client.post("/jobs", json={"dataset_id": dataset, "base_model": "tiny-bert", "hyperparameters": QUICK})
        model_id = wait_for_job(client, job.json()["id"])["model_id"]
    folder = service.store().local_dir(model_key(model_id))
    cache = ModelCache(3, threads=1)
    try:
        for hot in ("a1", "a2"):
            cache.get(hot, lambda: folder, "team-a")
        for n in range(6):
            cache.get(f"b{n}", lambda: folder, "team-b")
            cache.get("a1", lambda: folder, "team-a")  # A keeps using its models
            assert {"a1", "a2"} <= set(cache.loaded_ids())
        assert cache.loaded_ids()[-2:] == ["b5", "a1"]
        # A third team gets an even share (one slot each), taken from the team holding the most.
        for n in range(3):
            cache.get(f"c{n}", lambda: folder, "team-c")
        assert cache.loaded_ids() == ["b5", "a1", "c2"]
    finally:
        cache.close()
    alone = ModelCache(3, threads=1)
    try:  # a team alone has the whole cache, least recently used out
        for n in range(5):
            alone.get(f"d{n}", lambda: folder, "team-d")
        assert alone.loaded_ids() == ["d2", "d3", "d4"]
    finally:
        alone.close()
