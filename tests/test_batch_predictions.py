"""Batch prediction: a dataset through a model on a real worker, its results downloadable as CSV and JSONL, each
row the answer POST /predict gives for the same text; another team sees nothing of it; a run whose worker was lost
starts over and rewrites its results whole; what a run stores counts in its team's storage until it is deleted."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from app.artifacts.layout import dataset_key, prediction_key, read_dataset
from app.cli import cli
from app.config import Settings
from app.db import Database, utcnow
from app.predictions import service as predictions
from app.predictions.tables import PredictionRun
from app.queue import enqueue_batch_prediction, make_celery
from app.teams.tables import Team
from tests.conftest import wait_for_job
from tests.factories import text_csv, text_rows

HP = {"epochs": 2, "batch_size": 8, "learning_rate": 0.003, "seed": 3, "max_length": 16, "early_stopping": None}
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def model_id(service, key, text_dataset) -> str:
    with service.client(key) as client:
        job = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": HP})
        assert job.status_code == 201, job.text
        finished = wait_for_job(client, job.json()["id"])
    assert finished["status"] == "succeeded", finished["error"]
    return finished["model_id"]


def wait_for_run(client: httpx.Client, run_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/predictions/{run_id}").json()
        assert run["rows_done"] <= run["rows_total"], run
        if run["status"] in FINISHED:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"prediction run {run_id} still {run['status']} after {timeout}s")


def jsonl_results(client: httpx.Client, run_id: str) -> list[dict]:
    answer = client.get(f"/predictions/{run_id}/results", params={"format": "jsonl"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in answer.text.splitlines()]


def test_a_dataset_scored_on_a_worker_answers_what_predict_answers_in_csv_and_jsonl(
    service, client, text_dataset, model_id
):
    created = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset, "top_k": 2})
    assert created.status_code == 202, created.text
    # The answer reads the row after sending it: a fast worker may have claimed (or finished) it already.
    assert created.json()["status"] in FINISHED | {"queued", "running"} and created.json()["model_id"] == model_id
    run = wait_for_run(client, created.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    stored = read_dataset(service.store(), dataset_key(text_dataset))
    assert run["rows_done"] == run["rows_total"] == len(stored)

    rows = jsonl_results(client, run["id"])
    assert [r["row"] for r in rows] == list(range(len(stored)))
    assert [(r["text"], r["label"], r["split"]) for r in rows] == [(s["text"], s["label"], s["split"]) for s in stored]
    online = []
    for start in range(0, len(stored), 50):
        texts = [s["text"] for s in stored[start : start + 50]]
        answer = client.post("/predict", json={"model": model_id, "texts": texts, "top_k": 2})
        assert answer.status_code == 200, answer.text
        online += answer.json()["predictions"]
    for row, expected in zip(rows, online, strict=True):
        assert [t["label"] for t in row["top_k"]] == [e["label"] for e in expected]
        assert [t["score"] for t in row["top_k"]] == pytest.approx([e["score"] for e in expected], abs=1e-4)
        assert (row["prediction"], row["score"]) == (row["top_k"][0]["label"], row["top_k"][0]["score"])

    answer = client.get(f"/predictions/{run['id']}/results", params={"format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert f"predictions-{run['id']}.csv" in answer.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert list(table[0]) == ["row", "split", "text", "label", "prediction", "score", "prediction_2", "score_2"]
    assert [(int(r["row"]), r["text"], r["prediction"], r["prediction_2"]) for r in table] == [
        (r["row"], r["text"], r["top_k"][0]["label"], r["top_k"][1]["label"]) for r in rows
    ]
    assert [float(r["score"]) for r in table] == [r["score"] for r in rows]
    assert run["id"] in [r["id"] for r in client.get("/predictions").json()["items"]]


def test_a_split_through_an_alias(client, text_dataset, model_id):
    moved = client.put("/aliases/batch", json={"model_id": model_id, "force": True})  # 2 epochs: maybe below baseline
    assert moved.status_code == 200, moved.text
    created = client.post("/predictions", json={"model": "batch", "dataset_id": text_dataset, "split": "test"})
    assert created.status_code == 202, created.text
    run = wait_for_run(client, created.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    assert run["model_id"] == model_id and run["model_ref"] == "batch"
    dataset = client.get(f"/datasets/{text_dataset}").json()
    assert run["rows_total"] == sum(dataset["counts"]["test"].values())
    rows = jsonl_results(client, run["id"])
    assert len(rows) == run["rows_total"] and {r["split"] for r in rows} == {"test"}
    assert all(len(r["top_k"]) == 1 for r in rows)


def test_another_teams_run_dataset_and_model_answer_404(service, client, other_key, text_dataset, model_id):
    run = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset}).json()
    with service.client(other_key) as other:
        for answer in (
            other.get(f"/predictions/{run['id']}"),
            other.get(f"/predictions/{run['id']}/results"),
            other.post(f"/predictions/{run['id']}/cancel"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"] == f"No prediction run '{run['id']}'. List yours with GET /predictions."
        assert run["id"] not in [r["id"] for r in other.get("/predictions").json()["items"]]
        own_model = other.post("/predictions", json={"model": model_id, "dataset_id": text_dataset})
        assert own_model.status_code == 404 and model_id in own_model.json()["detail"]
    assert wait_for_run(client, run["id"])["status"] == "succeeded"


def test_results_wait_for_success_and_a_finished_run_cannot_cancel(client, text_dataset, model_id):
    run = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset}).json()
    cancelled = client.post(f"/predictions/{run['id']}/cancel")
    if cancelled.status_code == 200:  # the worker may have finished the run first
        assert cancelled.json()["status"] == "cancelled"
        time.sleep(1)
        assert client.get(f"/predictions/{run['id']}").json()["status"] == "cancelled"
        early = client.get(f"/predictions/{run['id']}/results")
        assert early.status_code == 409 and "is cancelled" in early.json()["detail"]
    else:
        assert cancelled.status_code == 409, cancelled.text
    again = client.post(f"/predictions/{run['id']}/cancel")
    assert again.status_code == 409 and "only a queued or running run can cancel" in again.json()["detail"]
    missing = client.post("/predictions", json={"model": model_id, "dataset_id": "nope"})
    assert missing.status_code == 404 and "No dataset 'nope'" in missing.json()["detail"]


def test_a_run_whose_worker_was_lost_is_sent_again_and_rewrites_its_results(service, client, text_dataset, model_id):
    """The reaper finds the run's lease expired, sends it again; the new attempt starts from row 0, replaces the
    half-written results of the lost one whole, and the lost attempt can no longer write."""
    created = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset})
    first = wait_for_run(client, created.json()["id"])
    assert first["status"] == "succeeded", first["error"]
    before = jsonl_results(client, first["id"])
    store = service.store()
    store.put_bytes(f"predictions/{first['id']}/results.jsonl", b'{"row": 0, "half": "written"}\n')
    settings: Settings = service.settings
    db = Database(settings.database_url)
    try:
        with db.session() as session:  # as a worker that died mid-run leaves it
            stale = utcnow() - timedelta(seconds=settings.lease_seconds + 5)
            session.execute(
                update(PredictionRun)
                .where(PredictionRun.id == first["id"])
                .values(status="running", rows_done=7, heartbeat_at=stale)
            )
        celery = make_celery(settings)
        with db.session() as session:
            sent = predictions.reap(
                session, settings, lambda run_id, pool: enqueue_batch_prediction(celery, run_id, pool)
            )
        assert first["id"] in sent
        again = wait_for_run(client, first["id"])
        assert again["status"] == "succeeded" and again["rows_done"] == again["rows_total"]
        assert jsonl_results(client, first["id"]) == before
        with db.session() as session:
            row = session.get(PredictionRun, first["id"])
            assert row is not None and row.attempt == 2
            assert not predictions.progress(session, first["id"], 1, 3)  # the lost attempt's writes are refused
            assert not predictions.succeed(session, first["id"], 1, 3)
    finally:
        db.dispose()


def test_the_cli_scores_a_split_and_downloads_it(cli_env, tmp_path, text_dataset, model_id):
    created = CliRunner().invoke(
        cli,
        ["predictions", "create", text_dataset, "--model", model_id, "--split", "val", "--wait", "--json"],
        env=cli_env,
    )
    assert created.exit_code == 0, created.output
    run = json.loads(created.output)
    assert run["status"] == "succeeded" and run["rows_done"] == run["rows_total"] > 0
    listed = CliRunner().invoke(cli, ["predictions", "list"], env=cli_env)
    assert listed.exit_code == 0 and run["id"] in listed.output
    target = tmp_path / "val.csv"
    downloaded = CliRunner().invoke(cli, ["predictions", "download", run["id"], str(target)], env=cli_env)
    assert downloaded.exit_code == 0, downloaded.output
    table = list(csv.DictReader(target.open()))
    assert len(table) == run["rows_total"] and {r["split"] for r in table} == {"val"}
    again = CliRunner().invoke(cli, ["predictions", "cancel", run["id"]], env=cli_env)
    assert again.exit_code == 1 and "already succeeded" in again.output
    deleted = CliRunner().invoke(cli, ["predictions", "delete", run["id"]], env=cli_env)
    assert deleted.exit_code == 0 and f"deleted {run['id']}" in deleted.output, deleted.output
    gone = CliRunner().invoke(cli, ["predictions", "show", run["id"]], env=cli_env)
    assert gone.exit_code == 1 and f"No prediction run '{run['id']}'" in gone.output


def test_an_uploaded_file_of_texts_with_or_without_labels(service, client, other_key, model_id):
    rows = text_rows(4, seed=9)
    texts = [r["text"] for r in rows]
    unlabelled = "\n".join(json.dumps({"review": t}) for t in texts).encode()
    created = client.post(
        "/predictions", data={"model": model_id, "text_column": "review"}, files={"file": ("t.jsonl", unlabelled)}
    )
    assert created.status_code == 202, created.text
    assert created.json()["uploaded"] is True and created.json()["dataset_id"] is None
    run = wait_for_run(client, created.json()["id"])
    assert run["status"] == "succeeded" and run["rows_done"] == run["rows_total"] == len(texts)
    results = jsonl_results(client, run["id"])
    expected = client.post("/predict", json={"model": model_id, "texts": texts}).json()["predictions"]
    assert [(r["text"], r["label"], r["split"]) for r in results] == [(t, None, "") for t in texts]
    assert [r["prediction"] for r in results] == [e[0]["label"] for e in expected]
    assert [r["score"] for r in results] == pytest.approx([e[0]["score"] for e in expected], abs=1e-4)

    labelled = client.post(
        "/predictions", data={"model": model_id, "label_column": "label"}, files={"file": ("t.csv", text_csv(rows))}
    )
    assert labelled.status_code == 202, labelled.text
    assert wait_for_run(client, labelled.json()["id"])["status"] == "succeeded"
    assert [r["label"] for r in jsonl_results(client, labelled.json()["id"])] == [r["label"] for r in rows]

    wrong = client.post("/predictions", data={"model": model_id}, files={"file": ("t.jsonl", unlabelled)})
    assert wrong.status_code == 422 and "no 'text' key" in wrong.json()["detail"]
    with service.client(other_key) as other:
        theirs = other.post("/predictions", data={"model": model_id}, files={"file": ("t.jsonl", unlabelled)})
        assert theirs.status_code == 404 and model_id in theirs.json()["detail"]
        assert other.get(f"/predictions/{run['id']}/results").status_code == 404


MB = 1024 * 1024


def storage(client: httpx.Client) -> dict:
    return client.get("/usage").json()["storage_bytes"]


def stored_files(service, run_id: str) -> dict[str, int]:
    """The run's files in the store (names under predictions/<id>/) and their sizes."""
    store = service.store()
    root = store.path(prediction_key(run_id))
    return {path.removeprefix(root + "/"): store.fs.size(path) for path in service.stored_keys(prediction_key(run_id))}


def test_what_a_run_stores_counts_in_usage_until_it_is_deleted(service, client, other_key, text_dataset, model_id):
    """An uploaded file and its results, and a dataset's results, are the team's bytes in GET /usage; DELETE removes
    the files and gives the bytes back; another team can delete nothing."""
    before = storage(client)
    uploaded = client.post(
        "/predictions",
        data={"model": model_id, "label_column": "label"},
        files={"file": ("t.csv", text_csv(text_rows(5, seed=4)))},
    )
    assert uploaded.status_code == 202, uploaded.text
    assert uploaded.json()["size_bytes"] > 0  # the input is stored (and counted) before any worker runs
    scored = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset, "split": "val"})
    runs = [wait_for_run(client, answer.json()["id"]) for answer in (uploaded, scored)]
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"], runs
    files = [stored_files(service, r["id"]) for r in runs]
    assert set(files[0]) == {"input/records.jsonl", "results.csv", "results.jsonl"}
    assert set(files[1]) == {"results.csv", "results.jsonl"}  # a dataset's rows stay the dataset's bytes
    assert [r["size_bytes"] for r in runs] == [sum(f.values()) for f in files]
    assert uploaded.json()["size_bytes"] in (files[0]["input/records.jsonl"], runs[0]["size_bytes"])

    held = storage(client)
    added = sum(size for f in files for size in f.values())
    assert held["predictions"] - before["predictions"] == held["used"] - before["used"] == added
    parts = ("datasets", "models", "checkpoints", "predictions")
    assert held["used"] == sum(held[part] for part in parts)

    with service.client(other_key) as other:
        theirs = other.delete(f"/predictions/{runs[0]['id']}")
        assert theirs.status_code == 404, theirs.text
        assert theirs.json()["detail"] == f"No prediction run '{runs[0]['id']}'. List yours with GET /predictions."
    assert stored_files(service, runs[0]["id"]) == files[0]

    for run in runs:
        assert client.delete(f"/predictions/{run['id']}").status_code == 204
        assert client.get(f"/predictions/{run['id']}").status_code == 404
        assert stored_files(service, run["id"]) == {}
        assert client.delete(f"/predictions/{run['id']}").status_code == 404
    after = storage(client)
    assert (after["predictions"], after["used"]) == (before["predictions"], before["used"])


def test_a_queued_or_running_run_is_cancelled_before_it_is_deleted(service, client, text_dataset, model_id):
    """The run is put back into each state as a worker sees it (a fresh lease and send, so no reaper touches it):
    deleting it answers 409 and leaves its files; cancelled, it deletes."""
    created = client.post("/predictions", json={"model": model_id, "dataset_id": text_dataset, "split": "test"})
    run = wait_for_run(client, created.json()["id"])
    assert run["status"] == "succeeded", run["error"]
    files = stored_files(service, run["id"])
    assert files and run["size_bytes"] == sum(files.values())
    db = Database(service.settings.database_url)
    try:
        for status in ("queued", "running"):
            with db.session() as session:
                now = utcnow()
                session.execute(
                    update(PredictionRun)
                    .where(PredictionRun.id == run["id"])
                    .values(status=status, heartbeat_at=now, enqueued_at=now, finished_at=None)
                )
            refused = client.delete(f"/predictions/{run['id']}")
            assert refused.status_code == 409, refused.text
            assert refused.json()["detail"] == (
                f"Prediction run '{run['id']}' is {status}; cancel it first (POST /predictions/{run['id']}/cancel), "
                "then delete it."
            )
            assert stored_files(service, run["id"]) == files
    finally:
        db.dispose()
    assert client.post(f"/predictions/{run['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/predictions/{run['id']}").status_code == 204
    assert stored_files(service, run["id"]) == {}


def test_an_upload_that_would_pass_the_storage_limit_is_refused(service, client, model_id):
    """The same 429 as a dataset upload's, before the file is parsed or stored; a file that fits is taken."""
    used = storage(client)["used"]
    limit_mb = used // MB + 2
    room = limit_mb * MB - used  # more than 1 MB, at most 2
    team = client.get("/usage").json()["team"]
    db = Database(service.settings.database_url)
    try:
        with db.session() as session:
            session.execute(update(Team).where(Team.name == team).values(max_storage_mb=limit_mb))
        too_big = b"text\n" + b"x" * (room + 1 - len(b"text\n"))
        refused = client.post("/predictions", data={"model": model_id}, files={"file": ("t.csv", too_big)})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        detail = refused.json()["detail"]
        assert "limit (storage)" in detail and "DELETE /predictions/{id}" in detail and "GET /usage" in detail
        assert storage(client)["used"] == used
        fits = client.post("/predictions", data={"model": model_id}, files={"file": ("t.csv", b"text\ngood\nbad\n")})
        assert fits.status_code == 202, fits.text
        assert fits.json()["size_bytes"] > 0
        assert wait_for_run(client, fits.json()["id"])["status"] == "succeeded"
        assert client.delete(f"/predictions/{fits.json()['id']}").status_code == 204
    finally:
        with db.session() as session:
            session.execute(update(Team).where(Team.name == team).values(max_storage_mb=None))
        db.dispose()
