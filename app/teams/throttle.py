"""Throttling failed authentication: too many wrong keys from one client address in a sliding window gets 429.

The count lives in the API process's memory: each API process (uvicorn worker, replica) counts on its own, so
with N processes a client gets up to N times the limit before every one of them refuses it. The client address is
the TCP peer, or the X-Forwarded-For address when the peer is a trusted proxy (uvicorn's FORWARDED_ALLOW_IPS,
127.0.0.1 by default): behind a reverse proxy, set it to the proxy's address, or every client shares one count.

A key this process has seen succeed recently still works from a throttled address (checked against the database as
usual), so one misconfigured client behind a shared address does not lock everyone else out; unknown keys from that
address are refused before the database is asked.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict, deque

from app.errors import TooManyRequests


class FailedAuthThrottle:
    """At most `limit` failed authentications per client address within any `window` seconds."""

    def __init__(
        self, limit: int, window: float, max_clients: int = 10_000, good_for: float = 600, max_good: int = 10_000
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients  # memory bound: the least recently failing addresses are forgotten first
        self.good_for = good_for  # how long a key that authenticated passes a throttled address
        self.max_good = max_good
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._good: OrderedDict[str, float] = OrderedDict()  # digest of a key that authenticated -> when
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

    def check(self, client: str, key: str | None = None) -> None:
        """429 with Retry-After if `client` is over the limit and `key` has not authenticated lately (before the key
        is even looked up)."""
        now = time.monotonic()
        with self._lock:
            failures = self._recent(client, now)
            if failures is None or len(failures) < self.limit:
                return
            seen = self._good.get(_digest(key)) if key is not None else None
            if seen is not None and seen > now - self.good_for:
                return
            retry_after = math.ceil(failures[0] + self.window - now)  # the oldest of the last `limit`
        raise TooManyRequests(
            f"Too many failed authentications from your address ({self.limit} within {self.window:g} s); "
            f"check the API key you send and retry after {retry_after} s.",
            retry_after=retry_after,
        )

    def succeeded(self, key: str) -> None:
        """Remember that `key` authenticated (a digest of it, for `good_for` seconds, the newest `max_good` keys)."""
        with self._lock:
            self._good[_digest(key)] = time.monotonic()
            self._good.move_to_end(_digest(key))
            while len(self._good) > self.max_good:
                self._good.popitem(last=False)

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


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
