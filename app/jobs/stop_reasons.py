"""Why a run stops before it ends on its own: raised at a step boundary or by a fenced write, caught by the runner."""

from __future__ import annotations

from app.public_text import public_text


class StopRun(Exception):
    """A reason to stop training this attempt now."""


class Cancelled(StopRun):
    """The user cancelled the job; the worker records it as cancelled."""


class HandedBack(StopRun):
    """This worker is shutting down: the job was checkpointed and goes back to the queue."""


class LostLease(StopRun):
    """This attempt no longer owns the job (it was reclaimed or finished elsewhere): stop without writing."""


class JobFailed(StopRun):
    """The job cannot succeed; `reason` is shown to the user as the job's error and says what to change."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def user_facing(exc: BaseException) -> str:
    """An unexpected exception as a job error a user may read: its type and message, with absolute paths cut to
    their last part and reprs dropped (the worker's log keeps the whole traceback)."""
    if isinstance(exc, JobFailed):
        return public_text(exc.reason)
    message = public_text(str(exc))
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


class Pruned(StopRun):
    """A sweep trial its study's pruner stopped; `reason` (with the step) goes into the job's `pruned` event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
