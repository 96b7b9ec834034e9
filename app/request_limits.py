"""Limits before work: every request body is capped by route before it is read, and a request that carries a body
is authenticated before any of it is read or spooled.

A pure ASGI middleware (no BaseHTTPMiddleware: it would buffer and cost a task per request):

- `Content-Length` over the route's cap: 413 at once, nothing read.
- A body without a length (chunked): counted as it arrives; past the cap the app's own answer is replaced by the
  413, and the rest of the body is never read.
- POST/PUT/PATCH/DELETE with a body: the bearer key is checked against the database first; an unknown, revoked or
  missing key is a 401 before a byte of the body is read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from app.config import Settings
from app.errors import AppError, PayloadTooLarge, Unauthorized

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MB = 1024 * 1024
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass(frozen=True)
class BodyCap:
    limit: int  # bytes
    what: str  # what the limit is, for the 413's detail

    def detail(self) -> str:
        return f"The request body is larger than {self.what}. Send less."


def body_cap(settings: Settings, method: str, path: str) -> BodyCap:
    """The largest body this route accepts."""
    if method == "POST" and path.rstrip("/") == "/datasets":
        # The multipart framing around the file is a few hundred bytes; one extra MB covers it and the form fields.
        return BodyCap(
            (settings.max_upload_mb + 1) * MB,
            f"the upload limit of {settings.max_upload_mb} MB (FINETUNE_MAX_UPLOAD_MB); split the dataset or "
            "downscale its images",
        )
    if method == "POST" and path.rstrip("/") == "/predict":
        return BodyCap(
            settings.max_predict_mb * MB,
            f"{settings.max_predict_mb} MB for one /predict request (FINETUNE_MAX_PREDICT_MB); send fewer or "
            "smaller inputs per request",
        )
    if method == "POST" and path.rstrip("/") == "/predictions":
        return BodyCap(
            (settings.max_text_upload_mb + 1) * MB,
            f"the text upload limit of {settings.max_text_upload_mb} MB (FINETUNE_MAX_TEXT_UPLOAD_MB); score the "
            "file in parts, or upload it as a dataset and send its dataset_id",
        )
    return BodyCap(settings.max_json_kb * 1024, f"{settings.max_json_kb} KB for a JSON request")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            return key.strip() if scheme.lower() == "bearer" and key.strip() else None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


def _has_body(scope: Scope) -> bool:
    if scope["method"] not in BODY_METHODS:
        return False
    length = _content_length(scope)
    chunked = any(n == b"transfer-encoding" for n, _ in scope.get("headers", []))
    return chunked or (length is not None and length != 0)


class RequestLimits:
    """See the module docstring. `authenticate(app_state, key)` raises Unauthorized (or another AppError)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        authenticate: Callable[[Any, str, str], None],
        recently_checked: Callable[[Any, str, str], bool] = lambda state, path, key: False,
    ) -> None:
        """`recently_checked(app_state, path, key)`: the key passed this check lately (no database round trip)."""
        self.app = app
        self.settings = settings
        self.authenticate = authenticate
        self.recently_checked = recently_checked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = body_cap(self.settings, scope["method"], scope["path"])
        length = _content_length(scope)
        if length == -1:
            await _problem(scope, receive, send, AppError("The Content-Length header is not a number."))
            return
        if length is not None and length > cap.limit:
            await _problem(scope, receive, send, PayloadTooLarge(cap.detail(), title="Request body too large"))
            return
        if _has_body(scope):
            refused = await self._check_key(scope)
            if refused is not None:
                await _problem(scope, receive, send, refused)
                return
        await self._run_capped(scope, receive, send, cap)

    async def _check_key(self, scope: Scope) -> AppError | None:
        key = _bearer(scope)
        if key is None:
            return Unauthorized("Send your API key as 'Authorization: Bearer <key>'.")
        if self.recently_checked(scope["app"].state, scope["path"], key):
            return None
        client = scope.get("client") or ("", 0)
        try:
            await run_in_threadpool(self.authenticate, scope["app"].state, key, client[0])
        except AppError as exc:
            return exc
        return None

    async def _run_capped(self, scope: Scope, receive: Receive, send: Send, cap: BodyCap) -> None:
        """Run the app, counting the body; past the cap, stop reading and answer 413 instead of the app."""
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:  # never read past the cap, whatever the app asks for
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap.limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to a truncated body is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _problem(scope, receive, send, PayloadTooLarge(cap.detail(), title="Request body too large"))


async def _problem(scope: Scope, receive: Receive, send: Send, error: AppError) -> None:
    body = {"type": "about:blank", "title": error.title, "status": error.status, "detail": error.detail}
    headers = {"Connection": "close", **error.headers}  # the unread body makes the connection unusable
    response = JSONResponse(body, status_code=error.status, media_type="application/problem+json", headers=headers)
    await response(scope, receive, send)
