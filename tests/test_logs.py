"""Tests of the log formats: text and one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler

from syncd import logs


def _record(exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "syncd.test", logging.ERROR, __file__, 1, "run %s failed", ("x",), exc_info
    )


def _configured_formatter(monkeypatch, journal: bool, log_format: str):
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure("INFO", log_format)
    formatter = root.handlers[0].formatter
    root.handlers[:], root.level = saved
    return formatter


def test_json_keys():
    """A JSON line has level, logger and the formatted message."""
    entry = json.loads(logs.JsonFormatter(timestamps=False).format(_record()))
    assert entry == {
        "level": "ERROR",
        "logger": "syncd.test",
        "message": "run x failed",
    }


def test_json_exception_text():
    """A record with an exception carries its traceback under exception."""
    try:
        raise ValueError("bad value")
    except ValueError:
        record = _record(sys.exc_info())
    entry = json.loads(logs.JsonFormatter(timestamps=False).format(record))
    assert "ValueError: bad value" in entry["exception"]


def test_json_one_line():
    """A message with newlines stays on one line."""
    record = _record()
    record.msg, record.args = "first\nsecond", ()
    line = logs.JsonFormatter(timestamps=True).format(record)
    assert "\n" not in line


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_journal_has_no_timestamp(monkeypatch, log_format):
    """Under journald neither format adds a timestamp of its own."""
    formatter = _configured_formatter(monkeypatch, True, log_format)
    line = formatter.format(_record())
    assert line.startswith(("ERROR", '{"level"'))


def test_json_time_outside_journal(monkeypatch):
    """Outside journald a JSON line starts with a UTC time."""
    formatter = _configured_formatter(monkeypatch, False, "json")
    entry = json.loads(formatter.format(_record()))
    assert entry["time"].endswith("Z")


SKIPPED_RUN = (
    'Execution of job "%s" skipped: maximum number of running instances reached (%d)'
)


class Clock:
    """A settable monotonic clock in seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def restore_scheduler_logging(restore_logging) -> Iterator[None]:
    """Undo what ``logs.configure`` does to the APScheduler loggers too."""
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    apscheduler = logging.getLogger("apscheduler")
    filters, level = scheduler_log.filters[:], apscheduler.level
    yield
    scheduler_log.filters[:] = filters
    apscheduler.setLevel(level)


@pytest.fixture
def jobs() -> Iterator[BackgroundScheduler]:
    """A scheduler that is never started, to make real APScheduler jobs."""
    yield BackgroundScheduler(timezone="UTC")


def _skipped(job: Any) -> logging.LogRecord:
    return logging.LogRecord(
        "apscheduler.scheduler",
        logging.WARNING,
        __file__,
        1,
        SKIPPED_RUN,
        (job, 1),
        None,
    )


def test_skipped_run_once_per_hour(jobs):
    """The skipped-run warning of one job passes once an hour, then with a count."""
    clock = Clock()
    skipped_filter = logs.SkippedRunFilter(clock=clock)
    poll = jobs.add_job(
        print, "interval", seconds=60, id="poll:payments", name="poll payments"
    )

    assert skipped_filter.filter(_skipped(poll))
    clock.now += 60
    assert not skipped_filter.filter(_skipped(poll))
    clock.now += 60
    assert not skipped_filter.filter(_skipped(poll))
    clock.now += 3600 - 120
    record = _skipped(poll)

    assert skipped_filter.filter(record)
    message = record.getMessage()
    assert message.startswith('Execution of job "poll payments (trigger')
    assert message.endswith(
        "; 2 more skipped runs of this job were not logged in the last 60 minutes"
    )


def test_skipped_run_counted_per_job(jobs):
    """Each job has its own hour, so one job's warnings do not hide another's."""
    skipped_filter = logs.SkippedRunFilter(clock=Clock())
    poll = jobs.add_job(print, "interval", seconds=60, id="poll:payments")
    reconcile = jobs.add_job(print, "interval", seconds=60, id="reconcile:shop")

    assert skipped_filter.filter(_skipped(poll))
    assert skipped_filter.filter(_skipped(reconcile))
    assert not skipped_filter.filter(_skipped(poll))


def test_job_errors_pass_filter():
    """Other APScheduler records, such as a job that raised, always pass."""
    skipped_filter = logs.SkippedRunFilter(clock=Clock())
    raised = logging.LogRecord(
        "apscheduler.executors.default",
        logging.ERROR,
        __file__,
        1,
        'Job "%s" raised an exception',
        ("poll payments",),
        None,
    )

    assert skipped_filter.filter(raised)
    assert skipped_filter.filter(raised)


def test_configure_installs_one_filter(restore_scheduler_logging):
    """Configuring twice leaves one skipped-run filter on the scheduler logger."""
    logs.configure("INFO", "text")
    logs.configure("INFO", "text")

    installed = logging.getLogger("apscheduler.scheduler").filters
    assert sum(isinstance(f, logs.SkippedRunFilter) for f in installed) == 1


def test_scheduler_warns_once_per_job(restore_scheduler_logging, capsys):
    """A job that outlasts its interval logs one skipped-run warning, not one each.

    A real APScheduler runs a job that blocks until three of its runs have
    been skipped. A job that raises is logged at ERROR all the same.
    """
    logs.configure("INFO", "text")
    skipped = threading.Semaphore(0)
    release = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_listener(lambda _: skipped.release(), EVENT_JOB_MAX_INSTANCES)
    scheduler.add_job(
        release.wait, "interval", seconds=0.05, id="slow", max_instances=1
    )
    scheduler.start()
    try:
        for _ in range(3):
            assert skipped.acquire(timeout=30), "APScheduler skipped no run"
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    try:
        raise RuntimeError("provider down")
    except RuntimeError:
        logging.getLogger("apscheduler.executors.default").exception(
            'Job "%s" raised an exception', "poll payments"
        )

    output = capsys.readouterr().err
    assert output.count(logs.MAX_INSTANCES_MESSAGE) == 1
    assert 'ERROR apscheduler.executors.default: Job "poll payments" raised' in output
