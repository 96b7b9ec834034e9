"""A small in-process cache whose entries live at most `ttl` seconds: what /predict looks up on every request (its
key, its alias's routes, its models' metadata) without a database round trip, and what another API process changed
(a revoked key, a moved alias) is seen within `ttl`.

Refresh ahead: once an entry is half its ttl old, `refresh_due` answers True to one caller, which looks the value up
again in the background and stores it (or drops the entry) while the others keep using it. Under steady traffic an
entry thus never expires, so no burst of requests all miss it at once and queue for the database; the bound is
unchanged, since an entry whose refresh has not landed by `ttl` still expires."""

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
        self._refreshing: dict[Hashable, int] = {}  # keys being refreshed: the generation each refresh began in
        self._generation = 0  # bumped by every invalidation
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

    def refresh_due(self, key: Hashable) -> int | None:
        """A token, for one caller until the refresh lands, when the entry of `key` is half its ttl old: the caller
        looks the value up again and hands it to `refreshed` with the token (None: nothing to do)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or key in self._refreshing or self.clock() - entry[0] < self.ttl / 2:
                return None
            self._refreshing[key] = self._generation
            return self._generation

    def refreshed(self, key: Hashable, value: V | None, token: int) -> None:
        """A refresh's result: the new value, or None when the lookup failed (the entry is dropped, so the next
        request looks it up itself and answers why). Ignored when the cache was invalidated since the refresh began:
        what it read may predate the change."""
        with self._lock:
            if self._refreshing.get(key) != token or self._generation != token:
                return
            del self._refreshing[key]
            if value is None:
                self._entries.pop(key, None)
            else:
                self._store(key, value)

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._store(key, value)

    def _store(self, key: Hashable, value: V) -> None:
        """(Called with the lock held.)"""
        if self.ttl <= 0:
            return
        self._entries[key] = (self.clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def discard(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every entry whose key matches (explicit invalidation, in this process)."""
        with self._lock:
            self._generation += 1
            for key in [k for k in self._entries if match(k)]:
                del self._entries[key]
            self._refreshing.clear()
