"""Logging set-up: one logger per module, plain text, quiet dependencies."""

from __future__ import annotations

import logging
import os
import sys


def configure(level: str = "INFO") -> None:
    """Send log records to standard error.

    Under journald (``JOURNAL_STREAM`` set) lines carry no timestamp, since the
    journal adds its own. httpx's per-request and APScheduler's per-run INFO
    lines are turned down to WARNING.
    """
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
