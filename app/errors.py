"""Typed errors that carry their HTTP status; one handler renders them as problem+json (RFC 9457)."""

from __future__ import annotations


class AppError(Exception):
    """An error the user can act on: status, a short title and a detail that says what to fix."""

    status: int = 400
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}  # more members of the problem body
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title


class NotFound(AppError):
    status = 404
    title = "Not found"


class Conflict(AppError):
    status = 409
    title = "Conflict"


class InvalidInput(AppError):
    status = 422
    title = "Invalid input"


class InvalidUpload(AppError):
    status = 422
    title = "Invalid dataset upload"


class PayloadTooLarge(AppError):
    status = 413
    title = "Upload too large"


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"


class Forbidden(AppError):
    status = 403
    title = "Forbidden"


class TooManyRequests(AppError):
    """A limit was reached: `Retry-After` (seconds) says when to try again; the detail says which limit."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
