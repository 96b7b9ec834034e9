"""Jobs: submit, list, read, cancel, delete; their metrics, events, checkpoints and report; the live stream, and
wait() on top of it (polling GET /jobs/{id} where the service has no stream)."""

from __future__ import annotations

import builtins
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx

from finetune_client import sse
from finetune_client.errors import NotFound, RateLimited, ServiceUnavailable, ServiceUnreachable, WaitTimeout
from finetune_client.resources import Resource, first
from finetune_client.transport import Transport
from finetune_client.types import Checkpoint, Event, Job, Metric, Progress, Report, StreamMessage

log = logging.getLogger("finetune_client")
REPORT_POLL_S = 1.0  # how often report(checkpoint=...) asks whether the checkpoint's report is ready
PAYLOADS: dict[str, type[Job] | type[Metric] | type[Event]] = {
    "status": Job, "end": Job, "metric": Metric, "event": Event,
}  # fmt: skip


class Jobs(Resource):
    def __init__(self, transport: Transport, stream_read_timeout: float = 60.0) -> None:
        super().__init__(transport)
        # The server sends a heartbeat every 15 s (by default): a quiet connection this long is presumed dead.
        self.stream_read_timeout = stream_read_timeout

    def create(
        self,
        dataset_id: str,
        base_model: str,
        hyperparameters: dict[str, Any] | None = None,
        *,
        priority: str | None = None,
        pool: str | None = None,
        gpus: int | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a fine-tuning job (`priority` low/normal/high orders your team's own jobs; `pool` and `gpus` ask
        for workers, see GET /pools). An Idempotency-Key is sent (a new one unless given), so a retry after a lost
        answer returns the same job instead of a second one."""
        body: dict[str, Any] = {"dataset_id": dataset_id, "base_model": base_model,
                                "hyperparameters": hyperparameters or {}}  # fmt: skip
        if priority is not None:
            body["priority"] = priority
        resources = {k: v for k, v in {"pool": pool, "gpus": gpus}.items() if v is not None}
        if resources:
            body["resources"] = resources
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(self._call("POST", "/jobs", json=body, headers=headers, idempotent=True))

    def list(self, status: str | None = None, *, limit: int | None = None, page_size: int | None = None) -> list[Job]:
        """The team's jobs, newest first (all of them, or the newest `limit`), optionally of one status."""
        items = self._pages("/jobs", Job, {"status": status}, page_size if limit is None else min(limit, 200))
        return first(items, limit)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._call("GET", f"/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop: a queued job is cancelled at once, a running one at its next step."""
        return Job.model_validate(self._call("POST", f"/jobs/{job_id}/cancel", idempotent=True))

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its metrics, events and checkpoints (its model stays)."""
        self._call("DELETE", f"/jobs/{job_id}")

    def metrics(
        self, job_id: str, name: str | None = None, *, after_step: int | None = None, page_size: int | None = None
    ) -> Iterator[Metric]:
        """Every metric row of the job in the order written (train_loss, learning_rate, samples_per_s per step;
        val_loss, val_accuracy, val_macro_f1 per evaluation), page after page."""
        params = {"name": name, "after_step": after_step}
        return self._pages(f"/jobs/{job_id}/metrics", Metric, params, page_size)

    def events(self, job_id: str, *, page_size: int | None = None) -> Iterator[Event]:
        """The job's events in order (queued, claimed, checkpoints, evaluations, early stop, failure...)."""
        return self._pages(f"/jobs/{job_id}/events", Event, {}, page_size)

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        return [Checkpoint.model_validate(c) for c in self._call("GET", f"/jobs/{job_id}/checkpoints")]

    def report(self, job_id: str, checkpoint: str | int | None = None, *, timeout: float = 600.0) -> Report:
        """The evaluation on the test split (a NotFound until the job has succeeded). With `checkpoint` (an id or a
        step), that checkpoint's: a worker computes it on the first request, and this waits for it (WaitTimeout
        after `timeout` seconds)."""
        if checkpoint is None:
            return Report.model_validate(self._call("GET", f"/jobs/{job_id}/report"))
        deadline = time.monotonic() + timeout
        while True:
            body = self._call("GET", f"/jobs/{job_id}/report", params={"checkpoint": str(checkpoint)})
            if "poll" not in body:
                return Report.model_validate(body)
            if time.monotonic() > deadline:
                raise WaitTimeout(
                    f"the report of checkpoint {checkpoint} was still {body['status']} after {timeout:.0f} s", body
                )
            time.sleep(REPORT_POLL_S)

    def stream(
        self, job_id: str, *, last_event_id: str | None = None, heartbeats: bool = False
    ) -> Iterator[StreamMessage]:
        """The job's live messages (GET /jobs/{id}/stream): `status` (a Job) first and on each change, `metric` and
        `event` rows as they are written, and `end` (the finished Job), after which the iteration stops. A dropped
        connection is resumed from the last message's id (Last-Event-ID): nothing is lost or repeated. With
        `heartbeats`, the server's keep-alive comments come as messages of event "heartbeat" too."""
        return self._stream(job_id, last_event_id, heartbeats, deadline=None, retry_refusals=True)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        poll_interval: float = 2.0,
    ) -> Job:
        """Block until the job has finished and return it (whatever its status: check `job.status`).

        `on_progress(progress)` is called on each status change, metric row and event (a Progress: the job, the
        newest row of each metric, the newest event). Follows the stream; where the service has none (404 for the
        route) or refuses one more (429, 503), polls GET /jobs/{id} (and the new metric rows) every `poll_interval`
        seconds instead. Raises WaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        progress = Progress(job=self.get(job_id))
        if progress.job.finished:
            for metric in self.metrics(job_id, after_step=max(progress.job.step - 1, -1)):
                progress.metrics[metric.name] = metric  # the last step's, for the callback to show
            if on_progress:
                on_progress(progress)
            return progress.job
        try:
            return self._follow_stream(progress, deadline, on_progress)
        except NotFound:
            self.get(job_id)  # the job itself gone: that NotFound is the answer
            log.info("the service has no job stream; polling GET /jobs/%s", job_id)
        except (RateLimited, ServiceUnavailable) as exc:
            log.info("the job stream was refused (%s); polling GET /jobs/%s", exc, job_id)
        return self._poll(progress, deadline, on_progress, poll_interval)

    def _follow_stream(
        self, progress: Progress, deadline: float | None, on_progress: Callable[[Progress], None] | None
    ) -> Job:
        for message in self._stream(progress.job.id, None, True, deadline, retry_refusals=False):
            if isinstance(message.data, Job):
                progress.job = message.data
            elif isinstance(message.data, Metric):
                progress.metrics[message.data.name] = message.data
            elif isinstance(message.data, Event):
                progress.last_event = message.data
            if on_progress and message.event != "heartbeat":
                on_progress(progress)
            if message.event == "end":  # after the last rows; a finished status may come before some of them
                return progress.job
            if deadline is not None and time.monotonic() >= deadline:
                break
        raise WaitTimeout(f"job {progress.job.id} is still {progress.job.status}", progress.job)

    def _poll(
        self,
        progress: Progress,
        deadline: float | None,
        on_progress: Callable[[Progress], None] | None,
        interval: float,
    ) -> Job:
        job_id, after_step = progress.job.id, progress.job.step - 1
        while True:
            progress.job = self.get(job_id)
            for metric in self.metrics(job_id, after_step=max(after_step, -1)):
                progress.metrics[metric.name] = metric  # rows of the last step come again: the newest wins
            after_step = progress.job.step - 1
            if on_progress:
                on_progress(progress)
            if progress.job.finished:
                return progress.job
            if deadline is not None and time.monotonic() + interval > deadline:
                raise WaitTimeout(f"job {job_id} is still {progress.job.status}", progress.job)
            time.sleep(interval)

    def _stream(
        self,
        job_id: str,
        last_event_id: str | None,
        heartbeats: bool,
        deadline: float | None,
        retry_refusals: bool,
    ) -> Iterator[StreamMessage]:
        """The stream, reconnected with Last-Event-ID when the connection drops or closes before `end` (at most
        max_retries times in a row without a message); stops quietly when `deadline` passes. Without
        `retry_refusals`, a 429 or 503 (too many streams) is raised at once."""
        transport, failures = self._transport, 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            read = self.stream_read_timeout
            if deadline is not None:
                read = max(0.1, min(read, deadline - time.monotonic()))
            timeout = httpx.Timeout(transport.http.timeout.connect, read=read)
            build = partial(
                transport.http.build_request, "GET", f"/jobs/{job_id}/stream", headers=headers, timeout=timeout
            )
            response = transport.send(build, idempotent=True, stream=True, retry_refusals=retry_refusals)
            try:
                for raw in sse.parse(response.iter_lines()):
                    if raw.comment is not None:
                        if heartbeats:
                            yield StreamMessage("heartbeat", raw.comment)
                        continue
                    failures, last_event_id = 0, raw.id or last_event_id
                    message = _message(raw)
                    yield message
                    if message.event == "end":
                        return
                reason = "the server closed the stream before its end event"
            except httpx.TransportError as exc:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                reason = f"{exc.__class__.__name__}: {exc}"
            finally:
                response.close()
            failures += 1
            if failures > transport.max_retries:
                raise ServiceUnreachable(f"GET /jobs/{job_id}/stream: {reason}")
            delay = transport.backoff(failures - 1)
            log.warning("job %s stream: %s; resuming after %s in %.1f s", job_id, reason, last_event_id, delay)
            time.sleep(delay)


def _message(raw: sse.RawEvent) -> StreamMessage:
    """A typed message: the data as Job, Metric or Event for the kinds the contract names, else decoded JSON."""
    try:
        data: Any = json.loads(raw.data)
    except ValueError:
        data = raw.data
    kind = PAYLOADS.get(raw.event)
    if kind is not None and isinstance(data, dict):
        data = kind.model_validate(data)
    return StreamMessage(raw.event, data, raw.id)
