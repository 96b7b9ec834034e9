"""What a key may do: read (every GET), train (change datasets, jobs and aliases; includes read, since whoever
submits a job watches it), predict (POST /predict, and batch prediction runs under /predictions), and admin (all of them)."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scope(StrEnum):
    read = "read"
    train = "train"
    predict = "predict"
    admin = "admin"


def parse_scopes(text: str) -> list[Scope]:
    """`"read,train"` as scopes in a stable order; ValueError naming the allowed ones for anything else."""
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(Scope))
    allowed = ", ".join(Scope)
    if not names:
        raise ValueError(f"give at least one scope of: {allowed}")
    if unknown:
        raise ValueError(f"unknown scope {', '.join(unknown)}; use a comma-separated list of: {allowed}")
    return [s for s in Scope if s in names]


def format_scopes(scopes: Iterable[Scope]) -> str:
    """The stored form: comma-separated, in the enum's order."""
    chosen = set(scopes)
    return ",".join(s.value for s in Scope if s in chosen)


# A scope also grants these.
IMPLIES = {Scope.admin: set(Scope), Scope.train: {Scope.read}}


def allows(stored: str, needed: Scope) -> bool:
    """Whether a key's stored scopes grant `needed`."""
    held = {Scope(part) for part in stored.split(",") if part in Scope.__members__}
    return any(needed == s or needed in IMPLIES.get(s, set()) for s in held)
