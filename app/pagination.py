"""Cursor pages: a list of items and the cursor that fetches the next page (null at the end)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


def newest_first(
    session: Session, query: Select, entity: Any, anchor: Any | None, limit: int
) -> tuple[list, str | None]:
    """One page of `query` ordered newest first by (created_at, id), after the row `anchor` (the cursor)."""
    query = query.order_by(entity.created_at.desc(), entity.id.desc())
    if anchor is not None:
        query = query.where(
            (entity.created_at < anchor.created_at)
            | ((entity.created_at == anchor.created_at) & (entity.id < anchor.id))
        )
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], (rows[limit - 1].id if len(rows) > limit else None)
