"""The ``jsonl`` sink: append each event as one line to a file, then fsync.

A delivery counts once the line is on disk. After a crash between the write
and the outcome being recorded, the line is written again: readers
deduplicate by the ``id`` field, the idempotency key.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from syncd.sinks.base import Outcome, Sink


class JsonlSink(Sink):
    """Appends envelopes to a file for log shippers."""

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        self._fd: int | None = None

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        try:
            fd = self._open()
            _write_all(fd, body.replace(b"\n", b" ") + b"\n")
            os.fsync(fd)
        except OSError as exc:
            self.close()
            return Outcome.failed(f"cannot append to {self.settings.path}: {exc}")
        return Outcome.ok()

    def _open(self) -> int:
        if self._fd is not None and _replaced(self.settings.path, self._fd):
            # The file was renamed or removed (log rotation), so append to a
            # new file at the configured path instead of the old one.
            self.close()
        if self._fd is None:
            path = self.settings.path
            created = not os.path.exists(path)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                if created:
                    _fsync_directory(path)
                if _ends_mid_line(fd):
                    # A crash or a failed write cut the last line short, so the
                    # next record starts on a fresh line after it.
                    _write_all(fd, b"\n")
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``, because os.write may write less (at a file size limit)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.EIO, "os.write wrote 0 bytes")
        view = view[written:]


def _fsync_directory(path: str) -> None:
    """Make a new file's directory entry durable, so the file survives a crash."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replaced(path: str, fd: int) -> bool:
    """Return whether ``path`` no longer names the file open as ``fd``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return True
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino)


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
