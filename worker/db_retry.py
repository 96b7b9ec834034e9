"""Riding out database outages: idempotent worker writes are retried until the database is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from app.db import is_connection_error

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(fn: Callable[[], T], *, within_s: float = 600.0, what: str = "database write") -> T:
    """Call `fn` (one transaction) until it succeeds, retrying connection errors for up to `within_s` seconds."""
    deadline, delay = time.monotonic() + within_s, 0.5
    while True:
        try:
            return fn()
        except DBAPIError as exc:
            if not is_connection_error(exc) or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, exc.__class__.__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
