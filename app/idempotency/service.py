"""Idempotency-Key on the creating POSTs (jobs, datasets), the way Stripe and the IETF draft do it.

- First request with a key: a claim row is written in the same transaction as what the request creates, with the
  answer; the unique key makes a concurrent twin wait for that commit and then replay it.
- Same key, same request: the first answer again (`Idempotent-Replayed: true`), nothing created.
- Same key, different request: 409. Keys are the team's own, per route, and kept for `KEEP` (then reusable).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO, TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.errors import Conflict, InvalidInput
from app.idempotency.tables import IdempotentRequest

KEEP = timedelta(hours=24)
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces, at most 200
T = TypeVar("T")


@dataclass(frozen=True)
class Replay:
    status_code: int
    body: dict[str, Any]


def fingerprint(*parts: object) -> str:
    """A stable digest of what a request asks for (JSON-able parts; bytes hashed as they are)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


def file_digest(file: BinaryIO) -> str:
    """sha256 of an open file's content, read in chunks; the file is left at its start."""
    file.seek(0)
    digest = hashlib.sha256()
    while chunk := file.read(1024 * 1024):
        digest.update(chunk)
    file.seek(0)
    return digest.hexdigest()


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InvalidInput("The Idempotency-Key header must be 1 to 200 printable ASCII characters without spaces.")
    return key


def run_once(
    session: Session,
    team_id: str,
    route: str,
    key: str | None,
    print_: str,
    create: Callable[[Callable[[int, dict[str, Any]], None]], T],
) -> T | Replay:
    """`create(remember)` once per key; `remember(status, body)` stores its answer before its transaction commits.

    Without a key this is just `create`. A replay returns `Replay`."""
    if key is None:
        return create(lambda status, body: None)
    check_key(key)
    session.execute(
        delete(IdempotentRequest).where(IdempotentRequest.created_at < utcnow() - KEEP)
    )  # expired keys are free again
    earlier = session.get(IdempotentRequest, (team_id, route, key))
    if earlier is not None:
        return _replay(earlier, print_)
    claim = IdempotentRequest(team_id=team_id, route=route, key=key, fingerprint=print_)
    session.add(claim)
    try:
        session.flush()  # a concurrent twin's flush waits here until this transaction ends, then fails
    except IntegrityError:
        session.rollback()
        earlier = session.get(IdempotentRequest, (team_id, route, key), populate_existing=True)
        if earlier is None:
            raise Conflict("A request with this Idempotency-Key failed a moment ago; send it again.") from None
        return _replay(earlier, print_)

    def remember(status: int, body: dict[str, Any]) -> None:
        claim.status_code, claim.response = status, body
        session.flush()

    return create(remember)


def _replay(earlier: IdempotentRequest, print_: str) -> Replay:
    if earlier.fingerprint != print_:
        raise Conflict(
            "This Idempotency-Key was already used for a different request; use a new key for a new request."
        )
    if earlier.status_code is None or earlier.response is None:
        raise Conflict("The first request with this Idempotency-Key is still being processed; retry in a moment.")
    return Replay(earlier.status_code, earlier.response)
