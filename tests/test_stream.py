"""The live stream (GET /jobs/{id}/stream): rows as they are written, resume without gaps or duplicates, heartbeats,
the end, team scoping and limits. The service runs with a 1 s heartbeat and 6 streams per team (tests/stacks.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import insert

from app.db import Database
from app.errors import TooManyRequests
from app.jobs.schemas import JobRead
from app.jobs.stream import EVENT_PAGE, MAX_QUEUED, METRIC_PAGE, Cursor, StreamHub, Subscription, TooManyStreams
from app.jobs.tables import JobEvent, Metric, TrainingJob
from tests.conftest import wait_for_job
from tests.factories import insert_job, text_csv

LONG = {"epochs": 1000, "batch_size": 8, "early_stopping": None}


@dataclass
class Message:
    kind: str  # status, metric, event, end, or heartbeat (the comment)
    id: str | None
    data: dict | None
    at: float


def messages(answer: httpx.Response) -> Iterator[Message]:
    """Parse an SSE body as it arrives (the way the console's fetch() reader does)."""
    kind, event_id, data, comment = None, None, [], False
    for line in answer.iter_lines():
        if line == "":
            if kind is not None:
                yield Message(kind, event_id, json.loads("\n".join(data)), time.monotonic())
            elif comment:
                yield Message("heartbeat", None, None, time.monotonic())
            kind, event_id, data, comment = None, None, [], False
        elif line.startswith(":"):
            comment = comment or line == ": heartbeat"
        else:
            field, _, value = line.partition(": ")
            if field == "event":
                kind = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data.append(value)


@contextmanager
def stream(client: httpx.Client, job_id: str, **kwargs) -> Iterator[Iterator[Message]]:
    with client.stream("GET", f"/jobs/{job_id}/stream", **kwargs) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        yield messages(answer)


def read_until(feed: Iterator[Message], done, timeout: float = 120) -> list[Message]:
    """Messages up to and including the first for which done(seen) holds."""
    seen: list[Message] = []
    deadline = time.monotonic() + timeout
    for message in feed:
        seen.append(message)
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"timed out after {[m.kind for m in seen][-20:]}"
    raise AssertionError(f"the stream closed early: {[m.kind for m in seen][-20:]}")


def count(kind: str):
    return lambda seen, n: sum(m.kind == kind for m in seen) >= n


def rows(seen: list[Message], kind: str) -> list[str]:
    return [json.dumps(m.data, sort_keys=True) for m in seen if m.kind == kind]


def all_rows(client: httpx.Client, job_id: str, what: str) -> list[str]:
    items, cursor = [], None
    while True:
        page = client.get(f"/jobs/{job_id}/{what}", params={"cursor": cursor} if cursor else {}).json()
        items += page["items"]
        if not (cursor := page["next_cursor"]):
            return [json.dumps(i, sort_keys=True) for i in items]


def submit(client: httpx.Client, dataset_id: str, hyperparameters: dict) -> str:
    answer = client.post(
        "/jobs", json={"dataset_id": dataset_id, "base_model": "tiny-bert", "hyperparameters": hyperparameters}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.fixture(scope="module")
def busy_job(service, key, text_dataset) -> Iterator[str]:
    """A job that trains until cancelled (so jobs submitted after it stay queued); cancelled at the end."""
    with service.client(key) as client:
        job_id = submit(client, text_dataset, LONG)
        yield job_id
        client.post(f"/jobs/{job_id}/cancel")
        wait_for_job(client, job_id, timeout=120)


def test_queued_job_gets_heartbeats_then_its_end_when_cancelled(client, busy_job, text_dataset):
    queued_id = submit(client, text_dataset, {"epochs": 1, "max_steps": 1})
    with stream(client, queued_id) as feed:
        first = next(feed)
        assert first.kind == "status" and first.id is None
        assert first.data.keys() == client.get(f"/jobs/{queued_id}").json().keys()  # the job as GET returns it
        assert first.data["status"] == "queued"
        quiet = read_until(feed, lambda seen: count("heartbeat")(seen, 2), timeout=20)
        assert {m.kind for m in quiet} <= {"heartbeat", "event"}  # the "queued" event, then nothing but heartbeats
        assert client.post(f"/jobs/{queued_id}/cancel").json()["status"] == "cancelled"
        rest = read_until(feed, lambda seen: seen[-1].kind == "end", timeout=20)
        assert next(feed, None) is None  # the server closed the stream after `end`
    assert rest[-1].data["status"] == "cancelled" and rest[-1].data["id"] == queued_id
    assert "cancelled" in [m.data["status"] for m in rest if m.kind == "status"]


def test_stream_is_team_scoped_and_checks_its_cursor(service, client, other_key, busy_job):
    with service.client(other_key) as other:
        answer = other.get(f"/jobs/{busy_job}/stream")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["detail"] == client.get("/jobs/nope/stream").json()["detail"].replace("nope", busy_job)
    bad = client.get(f"/jobs/{busy_job}/stream", headers={"Last-Event-ID": "12"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.text
    assert client.get(f"/jobs/{busy_job}/stream", params={"last_event_id": "a-1"}).status_code == 422


def test_streams_per_team_are_limited(service, busy_job):
    key = service.new_key("stream-limits")
    with service.client(key) as client:
        dataset_id = client.post(
            "/datasets", files={"file": ("r.csv", text_csv())}, data={"task": "text_classification"}
        ).json()["id"]
        job_id = submit(client, dataset_id, {"epochs": 1, "max_steps": 1})  # queued behind busy_job
        open_streams = [client.stream("GET", f"/jobs/{job_id}/stream") for _ in range(6)]
        answers = [s.__enter__() for s in open_streams]
        try:
            assert all(a.status_code == 200 for a in answers)
            over = client.get(f"/jobs/{job_id}/stream")
            assert over.status_code == 429
            assert int(over.headers["Retry-After"]) >= 1
            assert "FINETUNE_STREAM_MAX_PER_TEAM" in over.json()["detail"]
            open_streams.pop().__exit__(None, None, None)  # a closed stream frees its place
            deadline = time.monotonic() + 10
            while True:
                with client.stream("GET", f"/jobs/{job_id}/stream") as again:
                    if again.status_code == 200:
                        break
                    assert again.status_code == 429 and time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            for s in open_streams:
                s.__exit__(None, None, None)
            client.post(f"/jobs/{job_id}/cancel")


def test_live_rows_then_resume_without_gaps_or_duplicates(client, busy_job):
    with stream(client, busy_job) as feed:
        first = read_until(feed, lambda seen: count("metric")(seen, 6))
    live_status = client.get(f"/jobs/{busy_job}").json()
    assert live_status["status"] == "running"  # what we read was streamed while the job trained
    cut = [m.id for m in first if m.id][-1]
    metric_cut, event_cut = (int(x) for x in cut.split("-"))
    assert metric_cut > 0 and event_cut > 0  # the queued and claimed events came before the metrics

    with stream(client, busy_job, headers={"Last-Event-ID": cut}) as feed:
        second = read_until(feed, lambda seen: count("metric")(seen, 6) and seen[-1].at - seen[0].at > 2.5)
        assert second[0].kind == "status"
        arrivals = [m.at for m in second if m.kind == "metric"]
        assert arrivals[-1] - arrivals[0] > 0.8  # rows came as the worker wrote them (a flush a second), not at once
        client.post(f"/jobs/{busy_job}/cancel")
        second += read_until(feed, lambda seen: seen[-1].kind == "end")
    assert second[-1].data["status"] == "cancelled"
    assert client.get(f"/jobs/{busy_job}").json() == second[-1].data

    metrics, events = all_rows(client, busy_job, "metrics"), all_rows(client, busy_job, "events")
    streamed_metrics, streamed_events = (
        rows(first, "metric") + rows(second, "metric"),
        rows(first, "event") + rows(second, "event"),
    )
    assert sorted(streamed_metrics) == sorted(metrics)  # every row once: nothing lost, nothing twice
    assert sorted(streamed_events) == sorted(events)
    ids = [tuple(int(x) for x in m.id.split("-")) for m in first + second if m.id]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # ids only grow

    # The finished job: its whole backlog, then `end`; and from the cut (as a query parameter): the rest, exactly.
    with stream(client, busy_job) as feed:
        everything = list(feed)
    assert everything[0].kind == "status" and everything[-1].kind == "end"
    assert sorted(rows(everything, "metric")) == sorted(metrics)
    assert sorted(rows(everything, "event")) == sorted(events)
    with stream(client, busy_job, params={"last_event_id": cut}) as feed:
        rest = list(feed)
    assert sorted(rows(rest, "metric")) == sorted(rows(second, "metric"))
    assert sorted(rows(rest, "event")) == sorted(rows(second, "event"))
    assert rest[-1].kind == "end"


# The hub itself, against real databases: backlogs in pages, slow clients bounded, the limits.


def _fill(db: Database, job_id: str, metrics: int, events: int) -> None:
    with db.session() as session:
        rows = [{"job_id": job_id, "name": "train_loss", "step": n, "epoch": 0.0, "value": 1.0} for n in range(metrics)]
        session.execute(insert(Metric), rows)
        session.add_all(JobEvent(job_id=job_id, kind="note", message=f"e{n}") for n in range(events))


def _hub(db: Database, **limits: int) -> StreamHub:
    return StreamHub(db, poll_seconds=0.05, heartbeat_seconds=5, **{"max_streams": 100, "max_per_team": 100, **limits})


def _job_json(db: Database, job_id: str) -> dict:
    with db.session() as session:
        return JobRead.model_validate(session.get(TrainingJob, job_id)).model_dump(mode="json")


async def _drain(hub: StreamHub, sub: Subscription) -> list[str]:
    return [m async for m in hub.messages(sub)]


def test_hub_pages_a_backlog_and_bounds_a_slow_client(db: Database):
    total = MAX_QUEUED + 2 * METRIC_PAGE + 7
    job_id = insert_job(db, status="succeeded")
    _fill(db, job_id, total, 3)

    async def scenario() -> tuple[int, list[str], list[str]]:
        hub = _hub(db)
        slow = hub.subscribe("t", _job_json(db, job_id), Cursor())
        for _ in range(10):  # the client reads nothing: the hub stops feeding it once its queue is full
            await hub.poll_once()
        most_queued = slow.queue.qsize()
        everything = await _drain(hub, slow)
        from_cut = await _drain(hub, hub.subscribe("t", _job_json(db, job_id), Cursor(total - 5, 2)))
        await hub.close()
        assert hub.count == 0 and not hub.by_job
        return most_queued, everything, from_cut

    most_queued, everything, from_cut = asyncio.run(scenario())
    assert MAX_QUEUED <= most_queued <= MAX_QUEUED + METRIC_PAGE + EVENT_PAGE + 1
    kinds = [m.split("\n", 1)[0] for m in everything]
    assert kinds[0] == "event: status" and kinds[-1] == "event: end"
    assert kinds.count("event: metric") == total and kinds.count("event: event") == 3
    ids = [m.split("\n")[1] for m in everything if m.startswith(("event: metric", "event: event"))]
    assert len(set(ids)) == len(ids)
    assert [m.split("\n", 1)[0] for m in from_cut] == ["event: status"] + ["event: metric"] * 5 + [
        "event: event",
        "event: end",
    ]


def test_hub_limits_streams_per_process_and_per_team(db: Database):
    job_id = insert_job(db, status="running")

    async def scenario() -> None:
        hub = _hub(db, max_streams=2, max_per_team=1)
        job = _job_json(db, job_id)
        first = hub.subscribe("team-1", job, Cursor())
        with pytest.raises(TooManyRequests) as team_full:
            hub.subscribe("team-1", job, Cursor())
        assert team_full.value.status == 429 and team_full.value.headers["Retry-After"]
        hub.subscribe("team-2", job, Cursor())
        with pytest.raises(TooManyStreams) as process_full:
            hub.subscribe("team-3", job, Cursor())
        assert process_full.value.status == 503 and "FINETUNE_STREAM_MAX_CONNECTIONS" in process_full.value.detail
        hub.unsubscribe(first)
        hub.subscribe("team-1", job, Cursor())
        assert hub.count == 2 and hub.per_team == {"team-1": 1, "team-2": 1}
        await hub.close()

    asyncio.run(scenario())
