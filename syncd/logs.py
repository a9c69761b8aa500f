"""Logging set-up: one logger per module, plain text or JSON, quiet dependencies."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line.

    Keys: ``level``, ``logger``, ``message`` and, when the record carries an
    exception, ``exception`` with the formatted traceback. Outside journald a
    ``time`` key (ISO 8601, UTC) comes first.
    """

    converter = time.gmtime

    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {}
        if self.timestamps:
            entry["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%SZ")
        entry["level"] = record.levelname
        entry["logger"] = record.name
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Send log records to standard error as text lines or JSON objects.

    Under journald (``JOURNAL_STREAM`` set) lines carry no timestamp, since the
    journal adds its own. httpx's per-request, APScheduler's per-run and
    Alembic's INFO lines are turned down to WARNING.
    """
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(timestamps=not journald)
    elif journald:
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
