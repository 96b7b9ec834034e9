"""Every error is problem+json: the catch-all 500 with its request id, request ids on every answer, bounded
integers and strings, finite floats, and details without absolute paths, reprs or unbounded echoes."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from app.config import Settings
from app.jobs.stop_reasons import JobFailed, user_facing
from app.main import create_app
from app.public_text import public_text

PROBLEM = "application/problem+json"
HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def assert_problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- the catch-all, on the real app with one extra route that fails ----------------------------------------------


def failing_app(tmp_path: Path) -> FastAPI:
    """The service's app plus routes that fail the ways nothing else handles (the lifespan is not needed)."""
    app = create_app(Settings(var_dir=tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"secret state at {tmp_path}/internal.db: {object()!r}")

    class HandlerBug(Exception):
        pass

    @app.exception_handler(HandlerBug)
    async def broken_handler(*_: object) -> None:  # an error handler that fails: outside any route
        raise KeyError("handler bug")

    @app.get("/handler-bug")
    def handler_bug() -> None:
        raise HandlerBug()

    return app


@pytest.mark.parametrize("path", ["/boom", "/handler-bug"])
def test_an_unexpected_exception_is_a_logged_500_problem_with_a_request_id(tmp_path, caplog, path):
    client = TestClient(failing_app(tmp_path), raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR):
        answer = client.get(path, headers={"X-Request-ID": "support-ticket-42"})
    body = assert_problem(answer, 500)
    assert body["request_id"] == answer.headers["X-Request-ID"] == "support-ticket-42"
    assert "support-ticket-42" in body["detail"]
    assert str(tmp_path) not in answer.text and "secret" not in answer.text and "0x" not in answer.text
    logged = [r for r in caplog.records if "support-ticket-42" in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under the request id


def test_the_catch_all_gives_a_fresh_id_when_the_client_sends_none(tmp_path):
    answer = TestClient(failing_app(tmp_path), raise_server_exceptions=False).get("/boom")
    body = assert_problem(answer, 500)
    assert HEX_ID.match(body["request_id"]) and answer.headers["X-Request-ID"] == body["request_id"]


# --- request ids on the real service -----------------------------------------------------------------------------


def test_every_answer_carries_a_request_id_and_keeps_a_safe_one_the_client_sent(service, key):
    with service.client(key) as client:
        for path in ("/healthz", "/jobs", "/jobs/" + "0" * 32):
            answer = client.get(path, headers={"X-Request-ID": "client-id_1.2:3"})
            assert answer.headers["X-Request-ID"] == "client-id_1.2:3", path
        generated = {client.get("/healthz").headers["X-Request-ID"] for _ in range(2)}
        assert len(generated) == 2 and all(HEX_ID.match(g) for g in generated)
        for unsafe in ("x" * 65, "a b", "<script>", "id;drop"):
            answer = client.get("/healthz", headers={"X-Request-ID": unsafe})
            assert HEX_ID.match(answer.headers["X-Request-ID"]), unsafe


# --- bounded integers, strings and ids ----------------------------------------------------------------------------


def test_cursors_and_query_integers_beyond_any_row_are_422(service, key, text_dataset):
    huge = str(10**20)
    with service.client(key) as client:
        job = client.post(
            "/jobs", json={"dataset_id": text_dataset, "base_model": "tiny-bert", "hyperparameters": {"max_steps": 1}}
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        for path, params in [
            ("/datasets", {"cursor": huge}),
            ("/jobs", {"cursor": huge}),
            ("/models", {"cursor": huge}),
            (f"/jobs/{job_id}/metrics", {"cursor": huge}),
            (f"/jobs/{job_id}/events", {"cursor": huge}),
            (f"/jobs/{job_id}/metrics", {"after_step": huge}),
            ("/jobs", {"limit": huge}),
            ("/jobs", {"cursor": "../../etc"}),
        ]:
            body = assert_problem(client.get(path, params=params), 422)
            assert any(e["field"].startswith("query.") for e in body["errors"]), (path, body)
        client.post(f"/jobs/{job_id}/cancel")


@pytest.mark.parametrize(
    "hyperparameters",
    [
        b'{"max_grad_norm": Infinity}',
        b'{"max_grad_norm": NaN}',
        b'{"learning_rate": -Infinity}',
        b'{"early_stopping": {"min_delta": Infinity}}',
        b'{"max_steps": 100000000000000000000}',
        b'{"eval_every_steps": 100000000000000000000}',
    ],
)
def test_non_finite_floats_and_huge_integers_in_a_spec_are_422(service, key, text_dataset, hyperparameters):
    body = b'{"dataset_id": "%s", "base_model": "tiny-bert", "hyperparameters": %s}' % (
        text_dataset.encode(),
        hyperparameters,
    )
    with service.client(key) as client:
        before = [j["id"] for j in client.get("/jobs", params={"limit": 200}).json()["items"]]
        answer = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
        problem = assert_problem(answer, 422)
        assert problem["errors"][0]["field"].startswith("hyperparameters."), problem
        after = [j["id"] for j in client.get("/jobs", params={"limit": 200}).json()["items"]]
        assert after == before  # nothing stored (other jobs of the team may be moving meanwhile)


def test_echoes_of_what_the_client_sent_are_bounded(service, key):
    with service.client(key) as client:
        answers = [
            client.get("/jobs/" + "j" * 5000),
            client.get("/models/" + "m" * 5000),
            client.post("/jobs", json={"dataset_id": "d" * 5000, "base_model": "b" * 5000}),
            client.post("/jobs", json={"dataset_id": "d", "base_model": "b", "z" * 5000: 1}),
            client.post("/predict", json={"model": "m" * 5000, "texts": ["hi"]}),
            client.post("/jobs", json={"dataset_id": "d", "base_model": "b", **{f"extra{i}": i for i in range(500)}}),
        ]
    for answer in answers:
        body = assert_problem(answer, 422)
        assert len(answer.content) < 3000, answer.text[:300]
        assert len(body.get("errors", [])) <= 20


def test_a_missing_base_model_is_named_without_the_models_folder(service, key, text_dataset):
    with service.client(key) as client:
        for name in ("no-such-model", str(service.models_dir / "no-such-model"), "../tiny-bert"):
            answer = client.post("/jobs", json={"dataset_id": text_dataset, "base_model": name})
            body = assert_problem(answer, 422)
            assert "was not found" in body["detail"], body
            assert str(service.models_dir) not in answer.text
            assert str(service.var_dir) not in answer.text
            assert not re.search(r"(?<![\w.])/(tmp|home|var|root|usr)/", answer.text), answer.text


def test_an_unknown_query_parameter_is_422_naming_what_the_operation_takes(service, key):
    with service.client(key) as client:
        body = assert_problem(client.get("/jobs", params={"limt": 5}), 422)
        assert "'limt'" in body["detail"] and "limit" in body["detail"] and "status" in body["detail"]
        assert_problem(client.get("/healthz", params={"verbose": 1}), 422)
        assert client.get("/jobs", params={"limit": 5, "status": "failed"}).status_code == 200


def test_a_405_allows_every_method_of_the_path(service, key):
    with service.client(key) as client:
        for path, allowed in [
            ("/datasets", "GET, POST"),
            ("/datasets/" + "0" * 32, "GET, DELETE"),
            ("/jobs", "GET, POST"),
        ]:
            answer = client.patch(path)
            assert_problem(answer, 405)
            assert answer.headers["Allow"] == allowed, path


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>.", "cannot identify image file."),
        ("[Errno 2] No such file: '/srv/finetune/var/base-models/bert/config.json'", "No such file: 'config.json'"),
        ("could not open PosixPath('/home/me/models/x.bin')", "could not open 'x.bin'"),
        ("see http://example.org/a/b and data/train.csv", "see http://example.org/a/b and data/train.csv"),
        ("cancel it (POST /jobs/0a1b/cancel) first", "cancel it (POST /jobs/0a1b/cancel) first"),
        ("point it at a model (PUT /aliases/production)", "point it at a model (PUT /aliases/production)"),
    ],
)
def test_public_text_cuts_paths_and_reprs(raw, shown):
    assert shown in public_text(raw)
    assert "/srv/" not in public_text(raw) and "0x" not in public_text(raw)


def test_public_text_is_bounded():
    assert len(public_text("x" * 100_000)) == 2000 and public_text("x" * 100_000).endswith("…")


def test_a_job_error_shows_no_path_or_repr():
    assert user_facing(OSError(2, "No such file", "/srv/models/bert/config.json")).endswith(
        "No such file: 'config.json'"
    )
    assert user_facing(ValueError(f"bad input {object()!r}")) == "ValueError: bad input"
    assert user_facing(JobFailed("checkpoint /var/lib/finetune/work/job1/step-3.pt is unreadable")) == (
        "checkpoint step-3.pt is unreadable"
    )


def test_nul_characters_are_a_clean_4xx_on_either_database(service, key):
    with service.client(key) as client:
        assert_problem(client.get("/jobs/%00"), 422)
        assert_problem(client.get("/jobs", params={"cursor": "\x00"}), 422)
        answer = client.post("/jobs", json={"dataset_id": "a\x00b", "base_model": "tiny-bert"})
        # SQLite looks the id up (404); PostgreSQL cannot hold the text at all (422 rather than a database error)
        assert_problem(answer, 422 if service.stack.name == "production" else 404)
