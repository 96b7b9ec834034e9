"""Labels as the user wrote them: what one may hold, and two spellings of one class; names quoted back safely."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from decimal import Decimal

from app.errors import InvalidUpload

MAX_LABEL_CHARS = 200
SHOWN_CHARS = 120  # longest name or spelling quoted back in a message
LABEL_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 (tab and line breaks included), DEL and C1 controls
# what is escaped when a name is quoted back: controls, zero-width and bidirectional-override characters
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def shown(value: str) -> str:
    """A name or spelling as quoted back in a message: invisible and control characters escaped, bounded."""
    escaped = INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    return escaped if len(escaped) <= SHOWN_CHARS else escaped[:SHOWN_CHARS] + "..."


def check_label(where: str, label: str) -> None:
    """A label is non-empty, short and free of control characters (tabs and line breaks included)."""
    if not label:
        raise InvalidUpload(f"{where}: the label is empty")
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidUpload(
            f"{where}: the label has {len(label):,} characters; a label may have at most {MAX_LABEL_CHARS}"
        )
    if control := LABEL_CONTROLS.search(label):
        raise InvalidUpload(f"{where}: the label holds the control character U+{ord(control.group()):04X}; remove it")


def check_label_spellings(labels: Iterable[tuple[str, str, str]]) -> None:
    """Refuse two spellings of what reads as one class: case, spaces, quotes, 1 vs "1" vs 1.0, true vs 1.

    `labels` holds (label as stored, spelling as written, where); the first spelling of each class is kept."""
    first: dict[str, tuple[str, str]] = {}  # normalised -> (spelling, where)
    for label, spelling, where in labels:
        key = label_key(label)
        seen = first.setdefault(key, (spelling, where))
        if seen[0] != spelling:
            raise InvalidUpload(
                f"{where}: the label {shown(spelling)} and {shown(seen[0])} ({seen[1]}) would be read as the "
                "same class (they differ only in case, spaces, quotes, or how a number or true/false is "
                "written); spell each class one way"
            )


def label_key(label: str) -> str:
    """What a label means, for spotting two spellings of one class: "True", " true", "'true'" and "1" agree."""
    key = " ".join(unicodedata.normalize("NFKC", label).strip().strip("\"'").split()).casefold()
    key = {"true": "1", "false": "0", "yes": "1", "no": "0"}.get(key, key)
    try:
        number = Decimal(key).normalize()
    except ArithmeticError:  # not a number (InvalidOperation), or one beyond Decimal's exponents
        return key
    return str(number) if number.is_finite() else key
