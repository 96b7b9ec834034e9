"""Text a user may read: what an error detail, a job error or an event says, without this machine's absolute paths,
Python reprs (`<_io.BytesIO object at 0x7f...>`) or an unbounded echo of what the client sent."""

from __future__ import annotations

import re

# An absolute POSIX path (not part of a URL or a relative path, nor an API route after its method, as in
# "POST /jobs/{id}/cancel"): kept as its last part, the name a user knows.
_METHODS = "".join(f"(?<!{m} )" for m in ("GET", "PUT", "POST", "PATCH", "DELETE"))
_ABSOLUTE_PATH = re.compile(_METHODS + r"(?<![\w.:/])/(?:[\w.+@-]+/)+([\w.+@-]*)")
_PATH_REPR = re.compile(r"\b(?:Posix|Windows|Pure\w*)?Path\(('[^']*'|\"[^\"]*\")\)")
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ (?:object )?at 0x[0-9a-fA-F]+>")
DETAIL_LIMIT = 2000  # characters of a detail, a job error or an event
ECHO_LIMIT = 100  # characters of one value sent by the client and repeated in an answer


def public_text(text: str, limit: int = DETAIL_LIMIT) -> str:
    """`text` with absolute paths cut to their last part, object reprs dropped, and at most `limit` characters."""
    text = _PATH_REPR.sub(r"\1", text)
    text = _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<path>", text)
    text = _OBJECT_REPR.sub("", text)
    return clip(text, limit)


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """At most `limit` characters of `text`, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
