"""The Python client (finetune_client) against the real service: every method, pages, errors, retries."""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app import processes
from finetune_client import (
    Client,
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServiceUnreachable,
    Unauthorized,
    WaitTimeout,
    sse,
)
from finetune_client.errors import retry_after_seconds
from finetune_client.types import Event, Job, Metric, Progress, StreamMessage
from tests.conftest import running_service
from tests.factories import image_bytes, image_zip, text_csv
from tests.stacks import private_stack

# A tiny BERT that learns the sentiment words in a few dozen steps; no early stopping, so every step logs metrics.
HP = {"epochs": 10, "batch_size": 8, "learning_rate": 0.003, "seed": 3, "max_length": 16, "early_stopping": None}


@pytest.fixture(scope="module")
def sdk(service, key):
    with Client(service.url, key) as client:
        yield client


@pytest.fixture(scope="module")
def trained(sdk, text_dataset):
    """A succeeded text job, waited for through the client, with what its progress callback saw."""
    seen: list[tuple[str, int, int, int]] = []

    def record(progress: Progress) -> None:
        loss = progress.metrics.get("train_loss")
        seen.append((progress.job.status, progress.job.step, len(progress.metrics), loss.step if loss else 0))

    job = sdk.jobs.create(text_dataset, "tiny-bert", HP)
    assert job.status == "queued" and job.hyperparameters["epochs"] == 10
    done = sdk.jobs.wait(job.id, timeout=240, on_progress=record)
    assert done.status == "succeeded", done.error
    return done, seen


def test_the_client_imports_without_torch_transformers_or_the_service():
    code = "import sys, finetune_client; print(sorted({'torch', 'transformers', 'app'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=processes.ROOT)
    assert out.stdout.strip() == "[]"


def test_url_and_key_come_from_arguments_then_environment_then_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('url = "http://file:1/"\napi_key = "ftk_from_file"\n')
    monkeypatch.setenv("FINETUNE_CONFIG", str(config))
    monkeypatch.delenv("FINETUNE_URL", raising=False)
    monkeypatch.delenv("FINETUNE_API_KEY", raising=False)
    with Client() as client:
        assert client.url == "http://file:1"
        assert client._transport.http.headers["Authorization"] == "Bearer ftk_from_file"
    monkeypatch.setenv("FINETUNE_URL", "http://env:2")
    monkeypatch.setenv("FINETUNE_API_KEY", "ftk_from_env")
    with Client() as client:
        assert client.url == "http://env:2"
        assert client._transport.http.headers["Authorization"] == "Bearer ftk_from_env"
    with Client("http://arg:3", "ftk_arg") as client:
        assert client.url == "http://arg:3"
        assert client._transport.http.headers["Authorization"] == "Bearer ftk_arg"
    monkeypatch.delenv("FINETUNE_API_KEY")
    config.write_text('url = "http://file:1"\n')
    with pytest.raises(ConfigError, match="FINETUNE_API_KEY") as missing:
        Client()
    assert str(config) in str(missing.value)
    config.write_text("url = [unclosed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Client()


def test_datasets_upload_list_get_delete(sdk, tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_bytes(text_csv())
    from_path = sdk.datasets.upload(path, "text_classification", name="from a path")
    assert from_path.labels == ["negative", "positive"] and from_path.num_examples == 60
    assert from_path.counts["train"] == {"negative": 24, "positive": 24} and from_path.filename == "reviews.csv"
    # The same Idempotency-Key and file: the first dataset again, nothing stored twice.
    first = sdk.datasets.upload(text_csv(), "text_classification", filename="r.csv", idempotency_key="same-upload")
    again = sdk.datasets.upload(text_csv(), "text_classification", filename="r.csv", idempotency_key="same-upload")
    assert again.id == first.id != from_path.id
    with pytest.raises(ValueError, match="filename"):
        sdk.datasets.upload(text_csv(), "text_classification")
    listed = [d.id for d in sdk.datasets.list(page_size=1)]  # one per page: the cursor is followed
    assert {from_path.id, first.id} <= set(listed)
    assert [d.id for d in sdk.datasets.list(limit=1)] == [listed[0]]
    assert sdk.datasets.get(first.id).name == "r.csv"
    sdk.datasets.delete(first.id)
    with pytest.raises(NotFound, match=f"No dataset '{first.id}'") as gone:
        sdk.datasets.get(first.id)
    assert gone.value.status == 404 and gone.value.problem["status"] == 404
    sdk.datasets.delete(from_path.id)


def test_wait_follows_the_stream_and_returns_the_finished_job(trained):
    job, seen = trained
    assert seen[-1][:2] == ("succeeded", job.step)
    steps = [step for _, step, _, _ in seen]
    assert steps == sorted(steps) and job.step == job.total_steps > 0
    loss_steps = [step for *_, step in seen]
    assert loss_steps == sorted(loss_steps) and set(range(1, job.step + 1)) <= set(loss_steps)  # every step, live
    assert seen[-1][2] == 6  # the newest train_loss, learning_rate, samples_per_s, val_loss, val_accuracy, val_macro_f1
    assert job.model_id and job.finished_at is not None


def rows(messages: list[StreamMessage]) -> list[tuple]:
    """The metric and event rows of a stream, comparable across connections (status messages repeat on each)."""
    out = []
    for m in messages:
        if isinstance(m.data, Metric):
            out.append(("metric", m.data.name, m.data.step, m.data.value))
        elif isinstance(m.data, Event):
            out.append(("event", m.data.id))
    return out


def test_the_stream_of_a_finished_job_is_its_backlog_then_end(sdk, trained):
    job, _ = trained
    messages = list(sdk.jobs.stream(job.id))
    assert messages[0].event == "status" and isinstance(messages[0].data, Job)
    assert messages[-1].event == "end" and messages[-1].data.status == "succeeded"
    metrics = [("metric", m.name, m.step, m.value) for m in sdk.jobs.metrics(job.id)]
    events = [("event", e.id) for e in sdk.jobs.events(job.id)]
    assert sorted(rows(messages), key=str) == sorted(metrics + events, key=str)  # each row once
    # Resuming from a message's id gives exactly the rows after it.
    middle = len(messages) // 2
    resumed = list(sdk.jobs.stream(job.id, last_event_id=messages[middle].id))
    assert rows(resumed) == rows(messages[middle + 1 :]) and resumed[-1].event == "end"


class CuttingProxy:
    """A TCP proxy to the service that cuts its first connection after `cut_after` bytes of the answer (a dropped
    connection mid-stream); later connections pass whole."""

    def __init__(self, target: str, cut_after: int) -> None:
        self.target = httpx.URL(target)
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.target.host, self.target.port))
            limit = self.cut_after if self.connections == 0 else None
            self.connections += 1
            threading.Thread(target=self._pump, args=(downstream, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, limit), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while chunk := source.recv(4096):
                if limit is not None and sent + len(chunk) > limit:
                    sink.sendall(chunk[: limit - sent])
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_dropped_stream_resumes_from_its_last_event_id(sdk, key, trained, caplog):
    job, _ = trained
    whole = list(sdk.jobs.stream(job.id))
    proxy = CuttingProxy(sdk.url, cut_after=6000)  # the backlog is several times larger
    try:
        with Client(proxy.url, key) as through_proxy, caplog.at_level(logging.WARNING):
            cut = list(through_proxy.jobs.stream(job.id))
    finally:
        proxy.close()
    assert proxy.connections == 2
    assert any("resuming after" in r.getMessage() for r in caplog.records)
    assert rows(cut) == rows(whole)  # nothing lost, nothing twice
    assert [m.event for m in cut].count("end") == 1


def test_metrics_and_events_iterate_every_page(sdk, client, trained):
    job, _ = trained
    everything = client.get(f"/jobs/{job.id}/metrics", params={"limit": 10000}).json()
    assert everything["next_cursor"] is None
    paged = list(sdk.jobs.metrics(job.id, page_size=7))
    assert len(paged) == len(everything["items"]) > 3 * 7  # several pages, none lost or repeated
    assert [(m.name, m.step, m.value) for m in paged] == [
        (m["name"], m["step"], m["value"]) for m in everything["items"]
    ]
    losses = list(sdk.jobs.metrics(job.id, "train_loss", after_step=job.step - 2, page_size=1))
    assert [m.step for m in losses] == [job.step - 1, job.step]
    events = list(sdk.jobs.events(job.id, page_size=2))
    assert [e.id for e in events] == [e["id"] for e in client.get(f"/jobs/{job.id}/events").json()["items"]]
    assert {"queued", "claimed"} <= {e.kind for e in events} and len(events) > 4


def test_job_reads_checkpoints_report_and_listing(sdk, trained):
    job, _ = trained
    assert sdk.jobs.get(job.id).status == "succeeded"
    assert job.id in [j.id for j in sdk.jobs.list("succeeded")]
    assert job.id not in [j.id for j in sdk.jobs.list("queued")]
    checkpoints = sdk.jobs.checkpoints(job.id)
    assert checkpoints and any(c.is_best for c in checkpoints)
    report = sdk.jobs.report(job.id)
    assert 0.0 <= report.accuracy <= 1.0 and set(report.per_class) == {"negative", "positive"}
    assert report.confusion_matrix.labels == ["negative", "positive"]
    assert sum(map(sum, report.confusion_matrix.matrix)) == report.num_examples
    assert "majority_class" in report.baselines and report.macro_avg.support == report.num_examples
    assert report.model_extra is not None  # fields this client does not name are kept, not refused


def test_models_aliases_predict_and_usage(sdk, trained):
    job, _ = trained
    model = sdk.models.get(job.model_id)
    assert model.job_id == job.id and model.labels == ["negative", "positive"]
    assert "test_accuracy" in model.metrics
    assert job.model_id in [m.id for m in sdk.models.list()]
    alias = sdk.aliases.set("client-test", job.model_id)
    assert (alias.name, alias.model_id) == ("client-test", job.model_id)
    assert ("client-test", job.model_id) in [(a.name, a.model_id) for a in sdk.aliases.list()]
    answer = sdk.predict(["a great superb film", "an awful dull plot"], model="client-test", top_k=2)
    assert answer.model_id == job.model_id
    assert [len(top) for top in answer.predictions] == [2, 2]
    assert {p.label for p in answer.predictions[0]} == {"negative", "positive"}
    with pytest.raises(Conflict, match="alias") as refused:
        sdk.models.delete(job.model_id)
    assert refused.value.status == 409
    split = sdk.aliases.split("client-split", {job.model_id: 100}, shadow_model_id=job.model_id)
    assert [(r.model_id, r.weight) for r in split.routes] == [(job.model_id, 100)]
    assert split.shadow_model_id == job.model_id
    assert sdk.predict(["a great film"], model="client-split", routing_key="user-1").model_id == job.model_id
    deadline = time.monotonic() + 30
    while (stats := sdk.aliases.stats("client-split")).models[-1].compared < 1:  # the shadow answers after
        assert time.monotonic() < deadline, stats
        time.sleep(0.1)
    assert [(m.role, m.requests) for m in stats.models] == [("route", 1), ("shadow", 1)]
    assert stats.models[-1].agreement == 1.0  # the model shadowing itself agrees with itself
    with pytest.raises(ValueError, match="texts or images"):
        sdk.predict()
    usage = sdk.usage()
    assert usage.team == "team-a" and usage.storage_bytes.used > 0 and usage.active_jobs.limit >= 1


def test_an_image_model_predicts_from_paths_and_bytes_and_is_deleted(sdk, tmp_path):
    dataset = sdk.datasets.upload(image_zip(per_class=10), "image_classification", filename="colors.zip")
    job = sdk.jobs.create(dataset.id, "tiny-vit", {"max_steps": 1, "batch_size": 8})
    job = sdk.jobs.wait(job.id, timeout=240)
    assert job.status == "succeeded", job.error
    red = tmp_path / "red.png"
    red.write_bytes(image_bytes((220, 30, 30), seed=1))
    answer = sdk.predict(images=[red, image_bytes((30, 30, 220), seed=2)], model=job.model_id, top_k=2)
    assert [len(top) for top in answer.predictions] == [2, 2]
    assert {p.label for p in answer.predictions[1]} == {"red", "blue"}
    sdk.jobs.delete(job.id)
    with pytest.raises(NotFound):
        sdk.jobs.get(job.id)
    sdk.models.delete(job.model_id)
    with pytest.raises(NotFound, match="No model"):
        sdk.models.get(job.model_id)


def test_create_is_idempotent_and_cancel_stops_a_job(sdk, text_dataset):
    hp = {**HP, "epochs": 50}
    job = sdk.jobs.create(text_dataset, "tiny-bert", hp, idempotency_key="client-cancel")
    assert sdk.jobs.create(text_dataset, "tiny-bert", hp, idempotency_key="client-cancel").id == job.id
    with pytest.raises(Conflict, match="Idempotency-Key"):
        sdk.jobs.create(text_dataset, "tiny-bert", {**hp, "seed": 4}, idempotency_key="client-cancel")
    cancelled = sdk.jobs.cancel(job.id)
    assert cancelled.cancel_requested
    assert sdk.jobs.wait(job.id, timeout=120).status == "cancelled"
    with pytest.raises(NotFound, match="no report yet"):
        sdk.jobs.report(job.id)


def test_errors_raise_with_the_problem_detail(service, sdk, other_key, trained):
    job, _ = trained
    with Client(service.url, other_key) as other, pytest.raises(NotFound, match="No job") as hidden:
        other.jobs.get(job.id)  # another team's job is a 404, like a missing one
    assert hidden.value.title == "Not found" and hidden.value.request == f"GET /jobs/{job.id}"
    with pytest.raises(InvalidRequest) as invalid:
        sdk.jobs.create(job.dataset_id, "tiny-bert", {"epochs": 0, "batch_size": 0})
    assert {e["field"] for e in invalid.value.errors} >= {"hyperparameters.batch_size"}
    assert "batch_size" in invalid.value.detail
    with Client(service.url, "ftk_" + "w" * 40) as wrong, pytest.raises(Unauthorized, match="API key|key"):
        wrong.jobs.list()


def test_a_limit_with_a_long_retry_after_is_raised_at_once(service, text_dataset):
    key = service.new_key("team-client-limited")
    subprocess.run(
        processes.cli_command("teams", "limits", "--team", "team-client-limited", "--active-jobs", "1"),
        env=service.env, cwd=processes.ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with Client(service.url, key, max_retries=3, max_retry_wait=5) as limited:
        dataset = limited.datasets.upload(text_csv(), "text_classification", filename="r.csv")
        first = limited.jobs.create(dataset.id, "tiny-bert", {**HP, "epochs": 50})
        try:
            started = time.monotonic()
            with pytest.raises(RateLimited, match=r"limit \(active jobs: 1\)") as refused:
                limited.jobs.create(dataset.id, "tiny-bert", HP)
            assert time.monotonic() - started < 5  # Retry-After 60 is past max_retry_wait: not waited for
            assert refused.value.retry_after == 60 and refused.value.status == 429
        finally:
            limited.jobs.cancel(first.id)


def test_connection_failures_are_retried_then_raised(caplog):
    port = processes.free_port()  # nothing listens there
    with Client(f"http://127.0.0.1:{port}", "ftk_x", max_retries=2) as nowhere, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        with pytest.raises(ServiceUnreachable, match="ConnectError"):
            nowhere.jobs.list()
    assert time.monotonic() - started >= 1.5  # backoff 0.5 s, then 1 s
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


@pytest.fixture(scope="module")
def tight_api(tmp_path_factory, models_dir: Path):
    """An API alone on a stack of its own (no worker takes its jobs: they stay queued) that throttles an address
    after 2 failed keys within 2 s and holds one live stream per team."""
    settings = {
        "FINETUNE_AUTH_FAILURE_LIMIT": "2",
        "FINETUNE_AUTH_FAILURE_WINDOW_SECONDS": "2",
        "FINETUNE_STREAM_MAX_PER_TEAM": "1",
    }
    with (
        private_stack(redis_db=7) as stack,
        running_service(tmp_path_factory.mktemp("var-tight"), models_dir, stack, 0, settings) as running,
    ):
        yield running


def test_429_is_retried_after_its_retry_after(tight_api, caplog):
    url = tight_api.url
    newcomer = tight_api.new_key("team-throttle")  # made first: the window is short
    with Client(url, "ftk_" + "w" * 40, max_retries=0) as wrong:
        for _ in range(2):
            with pytest.raises(Unauthorized):
                wrong.usage()
        with pytest.raises(RateLimited, match="Too many failed authentications") as throttled:
            wrong.usage()
    assert 1 <= throttled.value.retry_after <= 2
    # A key this API has not seen succeed is refused from the throttled address until the window slides:
    # the client waits the Retry-After and its retry succeeds.
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {newcomer}"}) as raw:
        assert raw.get("/usage").status_code == 429
    with Client(url, newcomer, max_retries=3) as client, caplog.at_level(logging.WARNING):
        started = time.monotonic()
        assert client.usage().team == "team-throttle"
        assert time.monotonic() - started >= 0.5
    assert any("answered 429; retry 1" in r.getMessage() for r in caplog.records)


def test_wait_polls_when_the_stream_is_refused(tight_api, caplog):
    with Client(tight_api.url, tight_api.new_key("team-one-stream"), max_retry_wait=5) as client:
        dataset = client.datasets.upload(text_csv(), "text_classification", filename="r.csv")
        job = client.jobs.create(dataset.id, "tiny-bert", HP)  # no worker: it stays queued
        held = client.jobs.stream(job.id)
        assert next(held).event == "status"  # the team's one stream
        with pytest.raises(RateLimited, match="stream"):
            next(client.jobs.stream(job.id))  # a second one: 429 (Retry-After 10 s exceeds max_retry_wait 5)
        with caplog.at_level(logging.INFO), pytest.raises(WaitTimeout) as timed_out:
            client.jobs.wait(job.id, timeout=1.5, poll_interval=0.5)
        assert timed_out.value.job.status == "queued"
        assert any("polling" in r.getMessage() for r in caplog.records)
        threading.Timer(1.0, client.jobs.cancel, [job.id]).start()
        seen: list[str] = []
        done = client.jobs.wait(job.id, timeout=60, poll_interval=0.5, on_progress=lambda p: seen.append(p.job.status))
        assert done.status == "cancelled" and seen[0] == "queued" and seen[-1] == "cancelled"
        held.close()


def test_event_stream_parsing_follows_the_standard():
    lines = [": heartbeat", "event: metric", "id: 5-2", 'data: {"a":', "data: 1}", "retry: 100", "", "data: x", ""]
    parsed = list(sse.parse(lines))
    assert parsed[0].comment == "heartbeat"
    assert (parsed[1].event, parsed[1].data, parsed[1].id) == ("metric", '{"a":\n1}', "5-2")  # data lines joined
    assert (parsed[2].event, parsed[2].data, parsed[2].id) == ("message", "x", "5-2")  # the last id stays
    assert list(sse.parse(["event: status", ""])) == []  # no data: nothing dispatched


def test_retry_after_is_read_as_seconds_or_an_http_date():
    def answer(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_seconds(answer("7")) == 7.0
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(answer(later)) or 0) <= 30
    assert retry_after_seconds(answer("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None
