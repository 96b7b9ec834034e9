"""What the client raises: the service's problem+json answers as typed exceptions, and the client's own failures."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class FinetuneError(Exception):
    """Anything this client raises on purpose."""


class ConfigError(FinetuneError):
    """No API key, or an unreadable config file: the message says where the client looked."""


class ServiceUnreachable(FinetuneError):
    """The service did not answer (connection refused, reset or timed out), after the retries that were safe."""


class WaitTimeout(FinetuneError, TimeoutError):
    """`jobs.wait()` or `sweeps.wait()` ran past its timeout; `job` is the last state seen (the Job, or the Sweep)."""

    def __init__(self, message: str, job: Any) -> None:
        super().__init__(message)
        self.job = job


class ApiError(FinetuneError):
    """An error answer of the service (RFC 9457 problem+json): `status`, `title`, `detail` (what to fix) and the
    whole `problem` body (422s list each invalid field in `problem["errors"]`)."""

    def __init__(self, status: int, title: str, detail: str, problem: dict[str, Any], request: str = "") -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problem = problem
        self.request = request  # "GET /jobs/abc": what was asked
        self.retry_after: float | None = None

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The invalid fields of a 422 (field, message, type); empty otherwise."""
        return list(self.problem.get("errors") or [])


class BadRequest(ApiError):
    """400."""


class Unauthorized(ApiError):
    """401: no key, or an unknown, revoked or expired one."""


class Forbidden(ApiError):
    """403: the key lacks the scope the route needs (the detail names it)."""


class NotFound(ApiError):
    """404: no such resource for your team (another team's resource answers the same)."""


class Conflict(ApiError):
    """409: the resource's state forbids it, or an Idempotency-Key was reused for another request."""


class PayloadTooLarge(ApiError):
    """413."""


class InvalidRequest(ApiError):
    """422: the request or the uploaded data is invalid; `errors` lists the fields."""


class RateLimited(ApiError):
    """429: a limit was reached; `retry_after` (seconds) says when trying again may help."""


class ServerError(ApiError):
    """5xx."""


class ServiceUnavailable(ServerError):
    """503: a dependency (the database) is unavailable right now."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds (a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def error_from(response: httpx.Response) -> ApiError:
    """The exception for an error `response` (its body read), problem+json or not."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    text = response.text.strip()[:500]
    title = str(problem.get("title") or response.reason_phrase or "Error")
    detail = str(problem.get("detail") or text or title)
    kind = BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else ApiError)
    error = kind(response.status_code, title, detail, problem, f"{response.request.method} {response.request.url.path}")
    error.retry_after = retry_after_seconds(response)
    return error
