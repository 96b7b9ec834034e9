"""A small in-process cache whose entries live at most `ttl` seconds: what /predict looks up on every request (its
key, its alias's routes, its models' metadata) without a database round trip, and what another API process changed
(a revoked key, a moved alias) is seen within `ttl`."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    """At most `size` entries (least recently stored dropped first), each trusted for `ttl` seconds; ttl 0: off."""

    def __init__(self, ttl: float, size: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value stored under `key` less than `ttl` seconds ago, else None."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or self.clock() - entry[0] >= self.ttl:
            return None
        return entry[1]

    def stale(self, key: Hashable) -> V | None:
        """The value stored under `key`, however old (what served before a refresh)."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: Hashable, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every entry whose key matches (explicit invalidation, in this process)."""
        with self._lock:
            for key in [k for k in self._entries if match(k)]:
                del self._entries[key]
