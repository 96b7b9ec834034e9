"""The live stream of a job (`GET /jobs/{id}/stream`): one hub per API process polls the database for every job that
has subscribers and fans the new rows out to their queues, as Server-Sent Events.

Why a hub: a stream that polls on its own holds a database connection (or takes one every interval) per client, and
a few hundred idle browser tabs would exhaust the pool. Here an idle stream is an asyncio task waiting on its queue;
the hub reads, once per FINETUNE_STREAM_POLL_SECONDS, in one short session (in a thread, so the event loop never
waits on the database), the jobs that have subscribers, and each job's metric and event rows after the lowest cursor
among its subscribers. A subscriber whose queue is full (a slow client) is skipped until it drains, so memory per
stream stays bounded; a backlog (a finished job's whole series) is read in pages, one poll after another.

Messages (the contract the console and the client rely on):
    event: status   the job as GET /jobs/{id} returns it; first, then whenever it changes
    event: metric   one row as an item of GET /jobs/{id}/metrics        id: "<metric_id>-<event_id>"
    event: event    one row as an item of GET /jobs/{id}/events         id: "<metric_id>-<event_id>"
    : heartbeat     a comment, every FINETUNE_STREAM_HEARTBEAT_SECONDS when nothing else was sent
    event: end      the finished job; the server then closes the stream
The id is the highest metric id and the highest event id sent so far; a client that resumes with it (the
`Last-Event-ID` header or `last_event_id` query parameter) gets exactly the rows after both.

Ids as cursors assume a job's rows commit in id order. Metric rows have one writer (the attempt that owns the job,
one flush at a time), so they do. Events have a few (the worker, the API's cancel, a reaper): on PostgreSQL two of
them committing within the same instant could commit out of id order, and a stream polling between the two commits
would pass over the lower id; GET /jobs/{id}/events still lists it. SQLite serialises writers, so there it cannot.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse

from app.db import Database
from app.errors import AppError, TooManyRequests
from app.jobs.schemas import EventRead, JobRead, MetricRead
from app.jobs.tables import FINISHED, JobEvent, Metric, TrainingJob

log = logging.getLogger(__name__)

METRIC_PAGE = 2000  # metric rows read per job and poll (a backlog takes several polls, back to back)
EVENT_PAGE = 500
MAX_QUEUED = 4 * METRIC_PAGE  # a subscriber with more messages waiting than this is not fed until it drains
UNSTARTED_GRACE_S = 30.0  # a subscription whose response never started (client gone at once) is dropped after this
RETRY_AFTER_S = 10


class TooManyStreams(AppError):
    """This API process holds as many streams as it may (FINETUNE_STREAM_MAX_CONNECTIONS)."""

    status = 503
    title = "Too many streams"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": str(RETRY_AFTER_S)})


@dataclass(frozen=True)
class Cursor:
    """The highest metric id and event id a client has; `"<metric_id>-<event_id>"` on the wire."""

    metric_id: int = 0
    event_id: int = 0

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """The cursor of a `Last-Event-ID`; None or empty: from the start (the route checked the form)."""
        if not text:
            return cls()
        metric_id, event_id = text.split("-")
        return cls(int(metric_id), int(event_id))

    def __str__(self) -> str:
        return f"{self.metric_id}-{self.event_id}"


def to_json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def sse(kind: str, data: str, cursor: Cursor | None = None) -> str:
    """One SSE message: `data` is JSON text (one line), encoded once however many streams it goes to."""
    head = f"event: {kind}\n" + (f"id: {cursor}\n" if cursor is not None else "")
    return f"{head}data: {data}\n\n"


HEARTBEAT = ": heartbeat\n\n"
CURSOR_PATTERN = r"^[0-9]{1,18}-[0-9]{1,18}$"


@dataclass(eq=False)
class Subscription:
    """One client's stream: where it is, what it was last told, and its queue of SSE messages."""

    team_id: str
    job_id: str
    cursor: Cursor
    job: str  # the job as last sent (JSON)
    queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    created: float = field(default_factory=time.monotonic)
    started: bool = False
    ended: bool = False


@dataclass(frozen=True)
class Row:
    kind: str  # metric or event
    id: int
    data: str  # as an item of GET /jobs/{id}/metrics or /events (JSON)


@dataclass
class Rows:
    """What one poll read for one job: the job (None if it was deleted) and its rows after the lowest cursor."""

    job: str | None  # JSON
    finished: bool
    rows: list[Row]  # metrics and events together, in the order they were written
    drained: bool  # fewer rows than a page in both tables: nothing more was written up to this read


def job_view(job: TrainingJob) -> dict[str, Any]:
    """The job as GET /jobs/{id} returns it."""
    return JobRead.model_validate(job).model_dump(mode="json")


def read_rows(session: Session, wanted: dict[str, Cursor]) -> dict[str, Rows]:
    """For each job id, the job and its rows after the cursor (the job first, so a finished job's rows are all seen:
    a row written before the job finished was committed before its status was)."""
    jobs = {j.id: j for j in session.scalars(select(TrainingJob).where(TrainingJob.id.in_(list(wanted))))}
    out: dict[str, Rows] = {}
    for job_id, cursor in wanted.items():
        job = jobs.get(job_id)
        metrics = session.scalars(
            select(Metric)
            .where(Metric.job_id == job_id, Metric.id > cursor.metric_id)
            .order_by(Metric.id)
            .limit(METRIC_PAGE)
        ).all()
        events = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > cursor.event_id)
            .order_by(JobEvent.id)
            .limit(EVENT_PAGE)
        ).all()
        # Interleaved by time, each table kept in id order (clocks of API and workers may disagree a little).
        timed = heapq.merge(
            [(m.at, Row("metric", m.id, MetricRead.model_validate(m).model_dump_json())) for m in metrics],
            [(e.at, Row("event", e.id, EventRead.model_validate(e).model_dump_json())) for e in events],
            key=lambda pair: pair[0],
        )
        out[job_id] = Rows(
            job=to_json(job_view(job)) if job is not None else None,
            finished=job is None or job.status in FINISHED,
            rows=[row for _, row in timed],
            drained=len(metrics) < METRIC_PAGE and len(events) < EVENT_PAGE,
        )
    return out


def lowest_cursor(subs: list[Subscription]) -> Cursor:
    """Where a read must start so that every one of `subs` gets what it lacks."""
    return Cursor(min(s.cursor.metric_id for s in subs), min(s.cursor.event_id for s in subs))


class StreamHub:
    """Every live stream of this API process, fed by one polling task."""

    def __init__(
        self, db: Database, *, poll_seconds: float, heartbeat_seconds: float, max_streams: int, max_per_team: int
    ) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.max_streams = max_streams
        self.max_per_team = max_per_team
        self.by_job: dict[str, set[Subscription]] = {}
        self.per_team: dict[str, int] = {}
        self.count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- subscriptions -------------------------------------------------------------------------------------------

    def subscribe(self, team_id: str, job: dict[str, Any], cursor: Cursor) -> Subscription:
        """A new stream of `job` (already checked to be the team's) from `cursor`; its first message is the job."""
        if self.count >= self.max_streams:
            raise TooManyStreams(
                f"This API process holds its maximum of {self.max_streams} live streams "
                "(FINETUNE_STREAM_MAX_CONNECTIONS). Retry after the Retry-After seconds, or poll "
                "GET /jobs/{id}, /metrics and /events meanwhile."
            )
        if self.per_team.get(team_id, 0) >= self.max_per_team:
            raise TooManyRequests(
                f"Your team has {self.max_per_team} live streams open, its maximum per API process "
                "(FINETUNE_STREAM_MAX_PER_TEAM). Close one (each open console page or `watch` holds one), "
                "then retry.",
                retry_after=RETRY_AFTER_S,
            )
        sub = Subscription(team_id=team_id, job_id=job["id"], cursor=cursor, job=to_json(job))
        sub.queue.put_nowait(sse("status", sub.job))
        self.by_job.setdefault(sub.job_id, set()).add(sub)
        self.per_team[team_id] = self.per_team.get(team_id, 0) + 1
        self.count += 1
        self._ensure_running()
        self._wake.set()  # its backlog now, not after a poll interval
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self.by_job.get(sub.job_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self.by_job[sub.job_id]
        self.per_team[sub.team_id] -= 1
        if not self.per_team[sub.team_id]:
            del self.per_team[sub.team_id]
        self.count -= 1

    async def messages(self, sub: Subscription) -> AsyncIterator[str]:
        """The SSE text of one stream: its queue, a heartbeat when it was quiet, and cleanup however it ends."""
        sub.started = True
        try:
            while True:
                try:
                    message = await asyncio.wait_for(sub.queue.get(), timeout=self.heartbeat_seconds)
                except TimeoutError:
                    yield HEARTBEAT
                    continue
                yield message
                if message.startswith("event: end\n"):
                    return
        finally:  # the job ended, the client went away (the response is cancelled), or the server stops
            self.unsubscribe(sub)

    # --- the polling task ----------------------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            more = False
            try:
                more = await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database outage: the streams keep their heartbeats; try again next poll
                log.warning("stream hub: poll failed: %s", exc.__class__.__name__)
            if not more:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_seconds)
                except TimeoutError:
                    pass

    async def poll_once(self) -> bool:
        """Read and deliver one round; True when some job has more rows waiting (poll again at once)."""
        self._drop_unstarted()
        plan = self._plan()
        if not plan:
            return False
        wanted = {job_id: lowest_cursor(subs) for job_id, subs in plan.items()}
        rows = await asyncio.to_thread(self._read, wanted)
        for job_id, found in rows.items():
            for sub in plan[job_id]:  # only those the read started low enough for (a newcomer waits for the next)
                if sub in self.by_job.get(job_id, ()):
                    self._deliver(sub, found)
        return any(not found.drained for found in rows.values())

    def _read(self, wanted: dict[str, Cursor]) -> dict[str, Rows]:
        with self.db.session() as session:
            return read_rows(session, wanted)

    def _plan(self) -> dict[str, list[Subscription]]:
        """Per job, the subscribers that can take more now (a slow client's full queue waits to drain)."""
        plan = {
            job_id: [s for s in subs if s.queue.qsize() < MAX_QUEUED and not s.ended]
            for job_id, subs in self.by_job.items()
        }
        return {job_id: subs for job_id, subs in plan.items() if subs}

    def _deliver(self, sub: Subscription, found: Rows) -> None:
        """Queue for `sub` what it has not had: the job if it changed, new rows in the order written, the end."""
        if sub.ended:
            return
        if found.job is not None and found.job != sub.job:
            sub.job = found.job
            sub.queue.put_nowait(sse("status", found.job))
        for row in found.rows:
            if row.kind == "metric" and row.id > sub.cursor.metric_id:
                sub.cursor = Cursor(row.id, sub.cursor.event_id)
            elif row.kind == "event" and row.id > sub.cursor.event_id:
                sub.cursor = Cursor(sub.cursor.metric_id, row.id)
            else:
                continue  # it had this one (it resumed, or joined, further on)
            sub.queue.put_nowait(sse(row.kind, row.data, sub.cursor))
        if found.finished and found.drained:
            sub.ended = True
            sub.queue.put_nowait(sse("end", found.job or sub.job))

    def _drop_unstarted(self) -> None:
        """Forget subscriptions whose response never began (the client left before the first byte)."""
        now = time.monotonic()
        for subs in list(self.by_job.values()):
            for sub in list(subs):
                if not sub.started and now - sub.created > UNSTARTED_GRACE_S:
                    self.unsubscribe(sub)


def event_stream(hub: StreamHub, sub: Subscription) -> StreamingResponse:
    """The response of one stream; proxies are asked not to buffer or cache it."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(hub.messages(sub), media_type="text/event-stream", headers=headers)
