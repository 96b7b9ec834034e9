"""Torch work the API does outside its forward threads (loading a model, which for int8 quantizes it; converting a
model for a runtime and scoring it) runs in a thread of its own that ends with the work.

A thread that has run torch's parallel math and stays alive (an idle threadpool thread) keeps its math-library
threads, and the forward threads' single requests then took 2.5x as long (4.8 against 12.4 ms, MiniLM-L6, measured
in process); a thread that has ended leaves nothing behind (4.8 against 4.9 ms).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_passing_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a new thread, waited for (blocking); its result, or its exception raised here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="torch-passing", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
