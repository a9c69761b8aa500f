"""The ``command`` sink: run a program with the event as JSON on standard input.

Exit code 0 means delivered. The idempotency key is also passed in the
``SYNCD_IDEMPOTENCY_KEY`` environment variable. A program that runs longer
than the sink's timeout is killed with every process it started (it runs in
a process group of its own), and the attempt counts as failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

from syncd.sinks.base import Outcome, Sink


class CommandSink(Sink):
    """Runs the configured program once per delivery."""

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        # The program being run, so that close() can end it when syncd stops.
        self._running: subprocess.Popen[bytes] | None = None

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        command = list(self.settings.command)
        env = dict(os.environ, SYNCD_IDEMPOTENCY_KEY=idempotency_key)
        timeout = self.settings.timeout.total_seconds()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome.failed(f"cannot run {command[0]}: {exc.strerror}")
        self._running = process
        with process:
            try:
                _, stderr = process.communicate(body, timeout=timeout)
            except subprocess.TimeoutExpired:
                # Killed before Popen.__exit__, which waits for the program.
                _kill_group(process)
                return Outcome.failed(
                    f"{command[0]} did not finish within {timeout:g}s and was "
                    "killed with its child processes"
                )
            finally:
                self._running = None
        text = stderr.decode("utf-8", "replace").strip()[-300:] or "no output"
        if process.returncode == 0:
            return Outcome.ok()
        if process.returncode < 0:
            return Outcome.failed(
                f"{command[0]} was killed by signal {-process.returncode}: {text}"
            )
        return Outcome.failed(f"{command[0]} exited with {process.returncode}: {text}")

    def close(self) -> None:
        """Kill the program still running, with its children (syncd is stopping)."""
        process = self._running
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the program's process group and reap the program."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    # communicate() is not called again: a child that left the group may
    # still hold the pipes open.
    process.wait()
