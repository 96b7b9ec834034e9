"""Unknown query parameters are refused, not ignored: `?limt=5` or `?staus=failed` would otherwise silently answer
a different question than the one asked. So are NUL characters in the path or query (PostgreSQL text cannot hold
them; bodies are answered by the database error handler in app/main.py)."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.errors import InvalidInput
from app.public_text import clip


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters of a handler and of every dependency it uses, at any depth."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """A 422 naming the first query parameter the operation does not take, or one holding a NUL character
    (an app-wide dependency: `async`, so that it runs on the event loop rather than costing every request a hop to
    the threadpool and back)."""
    if any("\x00" in value for value in (*request.path_params.values(), *request.query_params.values())):
        raise InvalidInput("The path and query cannot contain NUL characters (%00); remove them.")
    if not request.query_params:
        return
    route = request.scope.get("route")
    declared = _query_names(route.dependant) if isinstance(route, APIRoute) else set()  # a few dataclasses
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "none"
        raise InvalidInput(f"Unknown query parameter '{clip(unknown[0], 40)}'; this operation takes: {takes}.")
