"""`finetune up`'s supervisor: keeps the API and the worker running on one machine.

A child that exits while the service is not stopping is started again after a backoff (1 s, doubling, at most
30 s); one that ran for `stable_seconds` starts the count again. When a child exits `max_failures` times in a row
each soon after it started, the supervisor stops everything and exits 1: something is broken for good (a bad
setting, a broker that refuses it) and restarting faster would only hide it. SIGTERM or Ctrl-C stops the children
and exits 0. When the worker dies (the out-of-memory killer's SIGKILL), `on_exit` hands back the job it held.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from app.config import Settings
from app.processes import stop, worker_identity

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    command: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row, each within stable_seconds of its start
    restart_at: float | None = None


def describe_exit(returncode: int) -> str:
    """`died (signal 9: SIGKILL, as the out-of-memory killer sends)` or `exited with status 1`."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown signal"
    oom = ", as the out-of-memory killer sends" if -returncode == signal.SIGKILL else ""
    return f"died (signal {-returncode}: {name}{oom})"


@dataclass
class Supervisor:
    """Starts `commands` (name: argv), restarts any that exits, gives up after repeated quick failures."""

    commands: Mapping[str, list[str]]
    on_exit: Callable[[str, subprocess.Popen], None] = lambda name, proc: None
    start: Callable[[list[str]], subprocess.Popen] = subprocess.Popen
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_failures: int = 5
    stable_seconds: float = 60.0
    poll_seconds: float = 0.2
    children: dict[str, Child] = field(default_factory=dict)

    def _launch(self, child: Child) -> None:
        child.proc = self.start(child.command)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("%s started (pid %s)", child.name, child.proc.pid)

    def _exited(self, child: Child, proc: subprocess.Popen) -> bool:
        """Note that `child` exited; schedule its restart. False when it has failed too often in a row."""
        now = time.monotonic()
        child.failures = child.failures + 1 if now - child.started_at < self.stable_seconds else 1
        try:
            self.on_exit(child.name, proc)
        except Exception as exc:  # the database may be down too: the reaper reclaims the job after its lease
            log.warning("after %s exited: %s", child.name, exc)
        if child.failures >= self.max_failures:
            log.error(
                "%s %s; it failed %d times in a row, each within %.0f s of starting: giving up",
                child.name, describe_exit(proc.returncode), child.failures, self.stable_seconds,
            )  # fmt: skip
            return False
        delay = min(self.backoff * 2 ** (child.failures - 1), self.max_backoff)
        log.warning("%s %s; restarting it in %.1f s", child.name, describe_exit(proc.returncode), delay)
        child.proc, child.restart_at = None, now + delay
        return True

    def run(self) -> int:
        """Until SIGTERM or Ctrl-C (0), or until a child keeps failing (1); the children are stopped either way."""

        def on_sigterm(*_: object) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        self.children = {name: Child(name, list(command)) for name, command in self.commands.items()}
        try:
            for child in self.children.values():
                self._launch(child)
            while True:
                time.sleep(self.poll_seconds)
                for child in self.children.values():
                    if child.proc is not None and child.proc.poll() is not None and not self._exited(child, child.proc):
                        return 1
                    if child.proc is None and child.restart_at is not None and time.monotonic() >= child.restart_at:
                        self._launch(child)
        except KeyboardInterrupt:
            return 0
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already
            stop([c.proc for c in self.children.values() if c.proc is not None], timeout=30)
            signal.signal(signal.SIGTERM, previous)


def reclaim_jobs_of(settings: Settings, name: str, proc: subprocess.Popen) -> None:
    """`on_exit` for `finetune up`: the job a dead worker held goes back to the queue now, with an event that says
    how the worker died, instead of after its lease expires (FINETUNE_LEASE_SECONDS)."""
    if name != "worker":
        return
    from functools import partial

    from app.db import Database
    from app.fleet.service import stopped
    from app.jobs.reaper import reclaim_from_dead_worker
    from app.queue import enqueue_training, make_celery

    db = Database(settings.database_url)
    try:
        with db.session() as session:
            how = f"{describe_exit(proc.returncode)} and is being restarted"
            send = partial(enqueue_training, make_celery(settings))
            jobs = reclaim_from_dead_worker(session, settings, worker_identity(proc.pid), how, send)
            stopped(session, worker_identity(proc.pid))  # no longer alive in GET /pools
        if jobs:
            log.warning("jobs the dead worker held, handed back: %s", ", ".join(jobs))
    finally:
        db.dispose()
