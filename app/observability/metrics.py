"""The process's own Prometheus metrics, defined once per process (prometheus_client's default registry), and the
calls that record them. Labels are route templates, methods and statuses only: never a team, a key, a dataset or a
job, so a scrape shows how the service behaves and nothing of what any team does with it."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

HTTP_REQUESTS = Counter(
    "finetune_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "finetune_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method, route template and status (live streams, "
    "which last as long as their clients stay, are counted in finetune_http_requests_total only)",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
PREDICT_BATCH_INPUTS = Histogram(
    "finetune_predict_batch_inputs", "Inputs in one /predict forward pass (requests merged)", buckets=BATCH_BUCKETS
)
PREDICT_BATCH_REQUESTS = Histogram(
    "finetune_predict_batch_requests", "Requests merged into one /predict forward pass", buckets=BATCH_BUCKETS
)
PREDICT_QUEUE_WAIT = Histogram(
    "finetune_predict_queue_wait_seconds",
    "Time a /predict request waited in its model's queue before its forward pass began",
    buckets=WAIT_BUCKETS,
)
PREDICT_MODEL_LOADS = Counter(
    "finetune_predict_model_loads",
    "Models loaded into this process for /predict, by when: 'request' (a request waited for the load) or 'ahead' "
    "(loaded and warmed before it took traffic, as a model an alias moves to is)",
    ["when"],
)


def observe_request(method: str, route: str, status: int, seconds: float | None) -> None:
    """One answered request; `seconds` None for a live stream (its duration is its client's, not the server's)."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    if seconds is not None:
        HTTP_LATENCY.labels(method, route, str(status)).observe(seconds)


def observe_predict_batch(inputs: int, waits: Iterable[float]) -> None:
    """One forward pass of the /predict batcher: its inputs, and how long each merged request had waited."""
    waits = list(waits)
    PREDICT_BATCH_INPUTS.observe(inputs)
    PREDICT_BATCH_REQUESTS.observe(len(waits))
    for wait in waits:
        PREDICT_QUEUE_WAIT.observe(wait)


def observe_model_load(ahead: bool) -> None:
    """A model loaded for serving: ahead of its traffic, or while a request waited."""
    PREDICT_MODEL_LOADS.labels("ahead" if ahead else "request").inc()
