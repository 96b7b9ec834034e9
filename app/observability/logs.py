"""Optional JSON logs (FINETUNE_LOG_FORMAT=json): one object per line, with the request id of the request that
logged it, so a line in a log store can be matched to the `X-Request-ID` a user reports."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# Set for each request by app.observability.http.RequestMetrics; copied into the threads sync handlers run in.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (request_id := REQUEST_ID.get()) is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, access_log: bool = True) -> None:
    """JSON lines on stderr for the app's loggers and uvicorn's (its access log too); "text" leaves logging as is.
    Without `access_log`, uvicorn's line per request is off."""
    logging.getLogger("uvicorn.access").disabled = not access_log
    if log_format != "json":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
