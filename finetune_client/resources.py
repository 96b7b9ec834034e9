"""What every resource of the client shares: JSON calls and cursor pages through the transport."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from finetune_client.transport import Transport

T = TypeVar("T", bound=BaseModel)
READS = frozenset({"GET", "HEAD", "PUT", "DELETE"})  # methods whose repetition changes nothing more


class Resource:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def _call(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """The decoded JSON answer of one request (None for an empty one)."""
        http = self._transport.http
        response = self._transport.send(
            lambda: http.build_request(method, path, **kwargs),
            idempotent=method in READS if idempotent is None else idempotent,
        )
        return response.json() if response.content else None

    def _pages(self, path: str, model: type[T], params: dict[str, Any], page_size: int | None) -> Iterator[T]:
        """Every item of a cursor-paged listing, fetching the next page only when the previous one is used up."""
        params = {k: v for k, v in params.items() if v is not None}
        if page_size is not None:
            params["limit"] = page_size
        while True:
            page = self._call("GET", path, params=params)
            for item in page["items"]:
                yield model.model_validate(item)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]


def first(items: Iterator[T], limit: int | None) -> list[T]:
    """At most `limit` items (all when None), without fetching pages past them."""
    out: list[T] = []
    for item in items:
        if limit is not None and len(out) >= limit:
            break
        out.append(item)
    return out
