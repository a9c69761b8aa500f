"""Logging set-up: one logger per module, plain text or JSON, quiet dependencies."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable

# APScheduler 3 logs this at WARNING each time a job is due while its
# previous run is still running, such as a poll that outlasts its interval.
MAX_INSTANCES_MESSAGE = "maximum number of running instances reached"


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


class SkippedRunFilter(logging.Filter):
    """Passes APScheduler's skipped-run warning once per job per ``interval``.

    The skipped runs in between are dropped and counted, and the next warning
    that passes for that job ends with their count. Every other record
    passes unchanged, including the errors of jobs that raise. ``interval``
    is in seconds of ``clock``.
    """

    def __init__(
        self,
        interval: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._passed_at: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if MAX_INSTANCES_MESSAGE not in str(record.msg):
            return True
        job = _job_id(record)
        now = self.clock()
        passed_at = self._passed_at.get(job)
        if passed_at is not None and now - passed_at < self.interval:
            self._dropped[job] = self._dropped.get(job, 0) + 1
            return False
        self._passed_at[job] = now
        dropped = self._dropped.pop(job, 0)
        if dropped and passed_at is not None and isinstance(record.args, tuple):
            record.msg = (
                f"{record.msg}; %d more skipped runs of this job were not "
                "logged in the last %d minutes"
            )
            record.args = (*record.args, dropped, round((now - passed_at) / 60))
        return True


def _job_id(record: logging.LogRecord) -> str:
    """Return the id of the APScheduler job that a record names."""
    if isinstance(record.args, tuple) and record.args:
        job = record.args[0]
        return str(getattr(job, "id", job))
    return str(record.msg)


def _install_skipped_run_filter() -> None:
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    for old in scheduler_log.filters[:]:
        if isinstance(old, SkippedRunFilter):
            scheduler_log.removeFilter(old)
    scheduler_log.addFilter(SkippedRunFilter())


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Send log records to standard error as text lines or JSON objects.

    Under journald (``JOURNAL_STREAM`` set) lines carry no timestamp, since the
    journal adds its own. httpx's per-request, APScheduler's per-run and
    Alembic's INFO lines are turned down to WARNING, psycopg's warnings about
    dropped connections are hidden, and APScheduler's warning for a skipped
    run is logged at most once per job an hour.
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
    # psycopg warns about each pipeline it cleans up after the server drops
    # a connection; syncd logs the outage itself, once.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    _install_skipped_run_filter()
