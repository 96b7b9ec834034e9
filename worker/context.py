"""What every piece of one job's run is handed: which attempt of which job, where to write, the shared resources."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.config import Settings
from app.db import Database
from worker.db_retry import retrying

T = TypeVar("T")


@dataclass(frozen=True)
class JobContext:
    job_id: str
    attempt: int
    workdir: Path  # this attempt's scratch folder, removed when it ends
    db: Database
    store: ArtifactStore
    settings: Settings

    def transact(self, what: str, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one transaction, retried through database outages (`fn` must be safe to repeat)."""

        def attempt() -> T:
            with self.db.session() as session:
                return fn(session)

        return retrying(attempt, what=what)
