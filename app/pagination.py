"""Cursor pages: a list of items and the cursor that fetches the next page (null at the end), and the one
dependency that reads `?limit=&cursor=` for every listing."""

# No `from __future__ import annotations` here: FastAPI must see the Query bounds `paging` closes over.
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

from app.errors import InvalidInput

T = TypeVar("T")
ID_CURSOR = r"^[0-9a-f]{32}$"  # listings newest first: the id of the previous page's last row
ROW_CURSOR = r"^[0-9]{1,18}$"  # listings in the order written (metrics, events): a row number


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None = None

    def row_id(self) -> int | None:
        """The cursor of a listing paged by row id (metrics, events)."""
        if self.cursor is None:
            return None
        if not self.cursor.isdigit() or len(self.cursor) > 18:
            raise InvalidInput("cursor: pass the next_cursor of the previous page.")
        return int(self.cursor)


def paging(default: int, maximum: int, cursor_pattern: str = ID_CURSOR) -> Any:
    """A dependency for `?limit=` (1..maximum, default `default`) and `?cursor=` (a previous page's next_cursor,
    which has the form `cursor_pattern`: anything else is a 422, before a query runs)."""

    def page_params(
        limit: Annotated[int, Query(ge=1, le=maximum, description="items per page")] = default,
        cursor: Annotated[
            str | None, Query(max_length=64, pattern=cursor_pattern, description="next_cursor of the previous page")
        ] = None,
    ) -> PageParams:
        return PageParams(limit, cursor)

    return Depends(page_params)


Paging = Annotated[PageParams, paging(50, 200)]


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
