"""Tests of the log formats: text and one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

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
