"""HTTP with the retries that are safe: 429 and 503 after their `Retry-After` (bounded), and connection failures
of requests that may be repeated (reads, PUT/DELETE, POSTs that carry an Idempotency-Key, predictions)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import httpx

from finetune_client.errors import ServiceUnreachable, error_from, retry_after_seconds

log = logging.getLogger("finetune_client")
RETRY_STATUSES = frozenset({429, 503})


class Transport:
    """One httpx connection pool, the key, and the retry policy."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait  # a longer Retry-After is not waited for: the error is raised at once
        self.http = http or httpx.Client(timeout=timeout)
        self.http.base_url = httpx.URL(url)
        self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.http.headers.setdefault("User-Agent", "finetune-client")

    def close(self) -> None:
        self.http.close()

    def send(
        self,
        build: Callable[[], httpx.Request],
        *,
        idempotent: bool,
        stream: bool = False,
        retry_refusals: bool = True,
    ) -> httpx.Response:
        """Send the request `build()` makes (called again for each attempt, so a file is reopened) and return the
        successful response; an error answer is raised as its ApiError, with its body read. Without
        `retry_refusals`, a 429 or 503 is raised at once (for a caller with another way to go)."""
        attempt = 0
        while True:
            request = build()
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                # A refused connection never reached the service: any request may be repeated then.
                repeatable = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                what = f"{request.method} {request.url}"
                if not repeatable or attempt >= self.max_retries:
                    raise ServiceUnreachable(f"{what}: {exc.__class__.__name__}: {exc}") from exc
                delay = self.backoff(attempt)
                log.warning("%s failed (%s); retry %d in %.1f s", what, exc.__class__.__name__, attempt + 1, delay)
            else:
                if response.is_success:
                    return response
                wait = self._retry_delay(response, attempt) if retry_refusals else None
                if wait is None:
                    response.read()
                    response.close()
                    raise error_from(response)
                response.close()
                delay = wait
                log.warning(
                    "%s %s answered %d; retry %d in %.1f s",
                    request.method, request.url.path, response.status_code, attempt + 1, delay,
                )  # fmt: skip
            time.sleep(delay)
            attempt += 1

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before repeating a 429 or 503, or None to raise it now (another status, the attempts
        spent, or a Retry-After beyond max_retry_wait)."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        after = retry_after_seconds(response)
        if after is None:
            return self.backoff(attempt)
        return after if after <= self.max_retry_wait else None

    def backoff(self, attempt: int) -> float:
        return min(0.5 * 2**attempt, self.max_retry_wait)
