"""Request ids and the last line of defence: a pure ASGI middleware (no BaseHTTPMiddleware, which buffers
streaming responses and costs a task per request) that gives every request an id, returns it as `X-Request-ID`, and
turns any exception nothing else handled into a 500 problem+json that carries the id; the log line carries it too,
with the traceback, so a user's report can be matched to it."""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# A client's own id is kept only when it is short and made of characters safe in a header and a log line.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
log = logging.getLogger(__name__)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID if it is short and safe, else a fresh one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            sent = value.decode("latin-1")
            return sent if _SAFE_ID.match(sent) else new_request_id()
    return new_request_id()


def current_request_id(scope: Scope) -> str | None:
    """The id the middleware gave this request (handlers read it from `request.scope`)."""
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def internal_error_body(request_id: str) -> bytes:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": "Internal error",
        "status": 500,
        "detail": f"The request failed on an unexpected error; it was logged with request id {request_id}.",
        "request_id": request_id,
    }
    return json.dumps(body).encode()


class RequestIdMiddleware:
    """Outermost of the app's own middleware: ids every HTTP request and answers unhandled errors as problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        header = (HEADER.lower().encode(), request_id.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != header[0]]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error, request id %s: %s %s", request_id, scope.get("method"), scope.get("path"))
            if started:  # the status line is already out: all that is left is to end the connection
                raise
            body = internal_error_body(request_id)
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(body)).encode()),
                        header,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
