"""The ``jsonl`` sink: append each event as one line to a file, then fsync.

A delivery counts once the line is on disk. After a crash between the write
and the outcome being recorded, the line is written again: readers
deduplicate by the ``id`` field, the idempotency key.
"""

from __future__ import annotations

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
            os.write(fd, body.replace(b"\n", b" ") + b"\n")
            os.fsync(fd)
        except OSError as exc:
            self.close()
            return Outcome.failed(f"cannot append to {self.settings.path}: {exc}")
        return Outcome.ok()

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
            fd = os.open(self.settings.path, flags, 0o640)
            if _ends_mid_line(fd):
                # A crash cut the last line short; start a fresh line after it.
                os.write(fd, b"\n")
            self._fd = fd
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _ends_mid_line(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
