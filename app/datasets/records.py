"""One labelled example of an upload, and the names of the splits."""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class Record:
    split: str  # "train" | "val" | "test"
    label: str
    text: str | None = None  # text tasks
    image: bytes | None = None  # image bytes held in memory (records built in code)
    source: str = ""  # where it came from: "cat/001.jpg" or "line 12", used in messages
    member: str | None = None  # image uploads: the verified entry's name in the uploaded zip (read when stored)
    digest: str = ""  # sha256 of the image file, for duplicate checks without holding the bytes


def split_name(raw: str) -> str | None:
    """Canonical split for a folder or column value, or None if it is not one."""
    return SPLIT_ALIASES.get(raw.strip().lower())


def plural(n: int, noun: str) -> str:
    """'1 example', '3 examples'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
