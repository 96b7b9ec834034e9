"""Team isolation on every route, authentication, and bad job specs answered 422 naming the field."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import wait_for_job
from tests.factories import image_zip, text_csv


@pytest.fixture(scope="module")
def team_a_resources(service, key):
    """A dataset, a finished job and its model, all team A's."""
    with service.client(key) as client:
        dataset = client.post("/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"})
        hp = {"epochs": 1, "batch_size": 16, "max_steps": 2}
        job = client.post(
            "/jobs", json={"dataset_id": dataset.json()["id"], "base_model": "tiny-bert", "hyperparameters": hp}
        )
        finished = wait_for_job(client, job.json()["id"])
        assert finished["status"] == "succeeded", finished["error"]
        # force: a model trained for two steps may not beat the majority class (see test_baselines.py)
        client.put("/aliases/team-a-only", json={"model_id": finished["model_id"], "force": True})
        return {"dataset": dataset.json()["id"], "job": finished["id"], "model": finished["model_id"]}


def _routes(r: dict) -> list[tuple[str, str, dict]]:
    return [
        ("GET", f"/datasets/{r['dataset']}", {}),
        ("DELETE", f"/datasets/{r['dataset']}", {}),
        ("GET", f"/jobs/{r['job']}", {}),
        ("POST", f"/jobs/{r['job']}/cancel", {}),
        ("GET", f"/jobs/{r['job']}/metrics", {}),
        ("GET", f"/jobs/{r['job']}/events", {}),
        ("GET", f"/jobs/{r['job']}/checkpoints", {}),
        ("GET", f"/jobs/{r['job']}/report", {}),
        ("GET", f"/models/{r['model']}", {}),
        ("PUT", "/aliases/production", {"json": {"model_id": r["model"]}}),
        ("POST", "/predict", {"json": {"model": r["model"], "texts": ["good"]}}),
        ("POST", "/predict", {"json": {"model": "team-a-only", "texts": ["good"]}}),
        ("POST", "/jobs", {"json": {"dataset_id": r["dataset"], "base_model": "tiny-bert"}}),
    ]


def test_another_team_gets_404_like_a_missing_resource(service, other_key, key, team_a_resources):
    missing = {"dataset": "0" * 32, "job": "0" * 32, "model": "0" * 32}
    with service.client(other_key) as intruder:
        for (method, path, kw), (_, missing_path, missing_kw) in zip(
            _routes(team_a_resources), _routes(missing), strict=True
        ):
            answer = intruder.request(method, path, **kw)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            absent = intruder.request(method, missing_path, **missing_kw)
            assert absent.status_code == 404
            assert answer.json()["title"] == absent.json()["title"]
        assert intruder.get("/datasets").json()["items"] == []
        assert intruder.get("/jobs").json()["items"] == []
        assert intruder.get("/models").json()["items"] == []
        assert intruder.get("/aliases").json() == []
    with service.client(key) as owner:
        assert owner.get(f"/datasets/{team_a_resources['dataset']}").status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer ftk_not-a-key"}, {"Authorization": "Basic abc"}])
def test_requests_without_a_valid_key_are_401(service, headers):
    with service.client() as anonymous:
        for path in ("/datasets", "/jobs", "/models", "/aliases"):
            answer = anonymous.get(path, headers=headers)
            assert answer.status_code == 401
            assert "finetune keys create" in answer.json()["detail"] or "Bearer" in answer.json()["detail"]


def test_keys_are_stored_hashed(service, key):
    engine = create_engine(service.settings.database_url)
    with engine.connect() as conn:
        stored = [row[0] for row in conn.execute(text("SELECT key_hash FROM api_key"))]
    engine.dispose()
    assert key not in stored
    assert all(len(h) == 64 for h in stored)


BAD_SPECS = [
    ({"learning_rate": -1}, "hyperparameters.learning_rate"),
    ({"batch_size": 0}, "hyperparameters.batch_size"),
    ({"optimizer": "adam"}, "hyperparameters.optimizer"),
    ({"lr_scheduler": "step"}, "hyperparameters.lr_scheduler"),
    ({"freeze": "everything"}, "hyperparameters.freeze"),
    ({"epochs": 0}, "hyperparameters.epochs"),
    ({"warmup_ratio": 1.5}, "hyperparameters.warmup_ratio"),
    ({"early_stopping": {"metric": "train_loss"}}, "hyperparameters.early_stopping.metric"),
    ({"early_stopping": {"patience": 0}}, "hyperparameters.early_stopping.patience"),
    ({"dropout": 1.2}, "hyperparameters.dropout"),
    ({"learning_rat": 0.1}, "hyperparameters.learning_rat"),
]


@pytest.mark.parametrize(("hyperparameters", "field"), BAD_SPECS)
def test_bad_hyperparameters_are_422_naming_the_field(client, team_a_resources, hyperparameters, field):
    body = {"dataset_id": team_a_resources["dataset"], "base_model": "tiny-bert", "hyperparameters": hyperparameters}
    answer = client.post("/jobs", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in answer.json()["errors"]]
    assert field in answer.json()["detail"]


def test_unknown_base_model_and_missing_fields(service, client, team_a_resources):
    unknown = client.post("/jobs", json={"dataset_id": team_a_resources["dataset"], "base_model": "no-such-model"})
    assert unknown.status_code == 422
    assert "base_model 'no-such-model'" in unknown.json()["detail"]
    assert str(service.models_dir) not in unknown.json()["detail"]
    escape = client.post("/jobs", json={"dataset_id": team_a_resources["dataset"], "base_model": "../../etc"})
    assert escape.status_code == 422
    missing = client.post("/jobs", json={"base_model": "tiny-bert"})
    assert missing.status_code == 422
    assert "dataset_id" in missing.json()["detail"]
    not_json = client.post("/jobs", content=b"{oops", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_a_base_model_for_another_task_is_refused_at_submit(client, team_a_resources):
    images = client.post("/datasets", files={"file": ("i.zip", image_zip(8))}, data={"task": "image_classification"})
    text_dataset, image_dataset = team_a_resources["dataset"], images.json()["id"]
    for dataset_id, base_model, wanted in (
        (text_dataset, "tiny-vit", "text model"),
        (text_dataset, "tiny-timm", "text model"),
        (image_dataset, "tiny-bert", "image model"),
        (image_dataset, team_a_resources["model"], "image model"),  # a fine-tuned text model, continued
    ):
        answer = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": base_model})
        assert answer.status_code == 422, (base_model, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert f"base_model '{base_model}'" in answer.json()["detail"] and wanted in answer.json()["detail"]
    jobs = client.get("/jobs", params={"limit": 200}).json()["items"]
    assert image_dataset not in {j["dataset_id"] for j in jobs}  # nothing was stored


def test_jobs_list_pages_and_filters(client, team_a_resources):
    page = client.get("/jobs", params={"status": "succeeded", "limit": 1}).json()
    assert len(page["items"]) == 1 and page["items"][0]["status"] == "succeeded"
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_health_and_openapi(service):
    with service.client() as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/readyz").status_code == 200
        paths = anonymous.get("/openapi.json").json()["paths"]
        assert {"/datasets", "/jobs", "/jobs/{job_id}/report", "/predict", "/aliases/{name}"} <= set(paths)


def test_moving_an_alias_takes_effect_on_the_next_request(client, team_a_resources):
    dataset_id = team_a_resources["dataset"]
    hp = {"epochs": 1, "batch_size": 16, "max_steps": 1, "seed": 5}
    second = wait_for_job(
        client,
        client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": hp}).json()[
            "id"
        ],
    )
    assert second["status"] == "succeeded", second["error"]
    first_model, second_model = team_a_resources["model"], second["model_id"]
    # force: models trained for a step or two may not beat the majority class (see test_baselines.py)
    assert (
        client.put("/aliases/staging", json={"model_id": first_model, "force": True}).json()["model_id"] == first_model
    )
    assert client.post("/predict", json={"model": "staging", "texts": ["good"]}).json()["model_id"] == first_model
    assert client.put("/aliases/staging", json={"model_id": second_model, "force": True}).status_code == 200
    assert client.post("/predict", json={"model": "staging", "texts": ["good"]}).json()["model_id"] == second_model
    aliases = {a["name"]: a["model_id"] for a in client.get("/aliases").json()}
    assert aliases["staging"] == second_model
    assert client.put("/aliases/bad name!", json={"model_id": second_model}).status_code == 422
    assert client.put("/aliases/x", json={"model_id": "0" * 32}).status_code == 404
