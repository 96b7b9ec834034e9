"""What each model did for an alias (its routes' answers, its shadow's agreement), counted in memory and added to the
alias_traffic rows about once a second: a few rows per alias whatever the traffic, never a write per request."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from app.db import Database, utcnow
from app.registry.tables import AliasTraffic

log = logging.getLogger(__name__)
ROUTE, SHADOW = "route", "shadow"


@dataclass
class Counts:
    requests: int = 0
    inputs: int = 0
    errors: int = 0
    latency_ms_total: float = 0.0
    compared: int = 0
    agreed: int = 0


Key = tuple[str, str, str, str]  # team id, alias, model id, role


class TrafficCounters:
    """Counts summed per (team, alias, model, role) and written by a background thread every `interval` seconds."""

    def __init__(self, db: Database, interval: float = 1.0) -> None:
        self.db = db
        self.interval = interval
        self._counts: defaultdict[Key, Counts] = defaultdict(Counts)
        self._lock = threading.Lock()  # guards _counts
        self._writing = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(
        self,
        team_id: str,
        alias: str,
        model_id: str,
        role: str,
        *,
        inputs: int,
        latency_ms: float = 0.0,
        error: bool = False,
        compared: int = 0,
        agreed: int = 0,
    ) -> None:
        with self._lock:
            c = self._counts[(team_id, alias, model_id, role)]
            c.requests += 1
            c.inputs += inputs
            c.errors += int(error)
            c.latency_ms_total += 0.0 if error else latency_ms
            c.compared += compared
            c.agreed += agreed
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alias-traffic", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # the database is away: the counts are kept and written next time
                log.warning("could not write alias traffic counters; retrying", exc_info=True)

    def flush(self) -> None:
        """Add what was counted since the last flush to the rows (blocking; also called before the stats are read)."""
        with self._writing:
            with self._lock:
                pending, self._counts = self._counts, defaultdict(Counts)
            try:
                for key, counts in pending.items():
                    self._write(key, counts)
                    pending[key] = Counts()
            except BaseException:
                with self._lock:  # put back what was not written
                    for key, counts in pending.items():
                        _merge(self._counts[key], counts)
                raise

    def _write(self, key: Key, c: Counts) -> None:
        team_id, alias, model_id, role = key
        values = {
            "requests": AliasTraffic.requests + c.requests,
            "inputs": AliasTraffic.inputs + c.inputs,
            "errors": AliasTraffic.errors + c.errors,
            "latency_ms_total": AliasTraffic.latency_ms_total + c.latency_ms_total,
            "compared": AliasTraffic.compared + c.compared,
            "agreed": AliasTraffic.agreed + c.agreed,
            "updated_at": utcnow(),
        }
        where = (
            AliasTraffic.team_id == team_id,
            AliasTraffic.alias == alias,
            AliasTraffic.model_id == model_id,
            AliasTraffic.role == role,
        )
        for _ in range(2):  # an insert can race another API process's: then its row is there to add to
            with self.db.session() as session:
                if session.execute(update(AliasTraffic).where(*where).values(**values)).rowcount:  # type: ignore[attr-defined]
                    return
            try:
                with self.db.session() as session:
                    session.add(
                        AliasTraffic(
                            team_id=team_id,
                            alias=alias,
                            model_id=model_id,
                            role=role,
                            requests=c.requests,
                            inputs=c.inputs,
                            errors=c.errors,
                            latency_ms_total=c.latency_ms_total,
                            compared=c.compared,
                            agreed=c.agreed,
                        )
                    )
                return
            except IntegrityError:
                continue

    def close(self) -> None:
        """Stop the writer and write what is left (app shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            log.warning("alias traffic counters lost at shutdown", exc_info=True)


def _merge(into: Counts, more: Counts) -> None:
    into.requests += more.requests
    into.inputs += more.inputs
    into.errors += more.errors
    into.latency_ms_total += more.latency_ms_total
    into.compared += more.compared
    into.agreed += more.agreed
