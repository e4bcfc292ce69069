"""Structured JSON logs carrying the request id that caused them, in API and workers.

Log lines name ids (upload, batch, study row ids), never patient data: the formatter does
not scrub, so code must not log DICOM attribute values in the first place (a test scans
the logs of a full run for the sample patients' values).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            # The exception type and where, not its message: messages can quote input.
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = self.formatException(record.exc_info).splitlines()[-12:-1]
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """JSON lines on stderr for the whole process (idempotent)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("RELAYPACS_LOG_LEVEL", "INFO"))
