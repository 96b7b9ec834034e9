"""Throttling failed authentication: too many wrong keys from one client address in a sliding window gets 429.

The count lives in the API process's memory: each API process (uvicorn worker, replica) counts on its own, so
with N processes a client gets up to N times the limit before every one of them refuses it. The client address is
the TCP peer, or the X-Forwarded-For address when the peer is a trusted proxy (uvicorn's FORWARDED_ALLOW_IPS,
127.0.0.1 by default): behind a reverse proxy, set it to the proxy's address, or every client shares one count.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

from app.errors import TooManyRequests


class FailedAuthThrottle:
    """At most `limit` failed authentications per client address within any `window` seconds."""

    def __init__(self, limit: int, window: float, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients  # memory bound: the least recently failing addresses are forgotten first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        return failures

    def check(self, client: str) -> None:
        """429 with Retry-After if `client` is over the limit (before its key is even looked up)."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if failures is None or len(failures) < self.limit:
                return
            retry_after = math.ceil(failures[0] + self.window - now)  # the oldest of the last `limit`
        raise TooManyRequests(
            f"Too many failed authentications from your address ({self.limit} within {self.window:g} s); "
            f"check the API key you send and retry after {retry_after} s.",
            retry_after=retry_after,
        )

    def failed(self, client: str) -> None:
        """Count one failed authentication from `client`."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if failures is None:
                failures = self._failures[client] = deque(maxlen=self.limit)
                while len(self._failures) > self.max_clients:
                    self._failures.popitem(last=False)
            failures.append(now)
            self._failures.move_to_end(client)
