"""Request counts and latencies by route template: a pure ASGI middleware (streaming answers pass through untouched).

The label is the route's template (`/jobs/{job_id}`), never the raw path, so ids never become label values and a
scanner probing random paths adds one series ("unmatched"), not one per path."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.logs import REQUEST_ID
from app.observability.metrics import observe_request
from app.request_ids import current_request_id

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that answered, or would have (a request refused before routing: a 413, a 401)."""
    route = scope.get("route")
    if route is not None and hasattr(route, "path"):
        return route.path
    app = scope.get("app")
    full, partial = _match(getattr(getattr(app, "router", None), "routes", ()), scope)
    return full or partial or UNMATCHED


def _match(routes: Iterable[Any], scope: Scope) -> tuple[str | None, str | None]:
    """(The template of the route matching path and method, that of the first matching the path only: a 405.)
    FastAPI keeps an included router whole (`original_router`): its routes are searched in turn."""
    partial = None
    for candidate in routes:
        inner = getattr(candidate, "original_router", None)
        if inner is not None:
            full, inner_partial = _match(inner.routes, scope)
            if full is not None:
                return full, None
            partial = partial or inner_partial
            continue
        path = getattr(candidate, "path", None)
        if path is None:
            continue
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return path, None
        if match == Match.PARTIAL and partial is None:
            partial = path
    return None, partial


class RequestMetrics:
    """Counts every HTTP request by method, route template and status, and times it (but live streams); makes the
    request id (RequestIdMiddleware's, outside this one) visible to log lines."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        REQUEST_ID.set(current_request_id(scope))  # for JSON log lines (logs.py); the request's own context
        started = time.perf_counter()
        status, streaming = 500, False  # what an exception that escapes the app becomes (RequestIdMiddleware)

        async def send_and_note(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                streaming = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in message.get("headers", [])
                )
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            seconds = None if streaming else time.perf_counter() - started
            observe_request(scope["method"], route_template(scope), status, seconds)
