"""Server-Sent Events, parsed as the HTML standard says (https://html.spec.whatwg.org/#event-stream-interpretation)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RawEvent:
    """One dispatched SSE message (`event` defaults to "message"), or a comment line (`comment` set)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None


def parse(lines: Iterable[str]) -> Iterator[RawEvent]:
    """Messages from an event stream's lines (without their line endings); comments are yielded as they come."""
    event, last_id = "", None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield RawEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            yield RawEvent(comment=line[1:].removeprefix(" "))
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value  # kept for the messages after it too, as EventSource does
        # "retry" and unknown fields: nothing for this client to do
