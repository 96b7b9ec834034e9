"""The HTTP side of idempotent requests: the header, and a replay answered as the first answer was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse

from app.idempotency.service import Replay

IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Any unique string (a UUID): retrying with the same key and request returns the first answer.",
    ),
]
Remember = Callable[[int, dict[str, Any]], None]
IDEMPOTENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {"description": "The Idempotency-Key was used for a different request, or its first request is in flight"}
}


def replayed(result: Any) -> Any:
    """A replay becomes the first answer (status and body) marked `Idempotent-Replayed: true`; anything else as is."""
    if isinstance(result, Replay):
        return JSONResponse(result.body, status_code=result.status_code, headers={"Idempotent-Replayed": "true"})
    return result
