"""The ``command`` sink: run a program with the event as JSON on standard input.

Exit code 0 means delivered. The idempotency key is also passed in the
``SYNCD_IDEMPOTENCY_KEY`` environment variable. A program that runs longer
than the sink's timeout is killed and the attempt counts as failed.
"""

from __future__ import annotations

import os
import subprocess

from syncd.sinks.base import Outcome, Sink


class CommandSink(Sink):
    """Runs the configured program once per delivery."""

    def deliver(self, body: bytes, idempotency_key: str, timestamp: int) -> Outcome:
        command = list(self.settings.command)
        env = dict(os.environ, SYNCD_IDEMPOTENCY_KEY=idempotency_key)
        try:
            finished = subprocess.run(
                command,
                input=body,
                capture_output=True,
                timeout=self.settings.timeout.total_seconds(),
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Outcome.failed(
                f"{command[0]} did not finish within "
                f"{self.settings.timeout.total_seconds():g}s and was killed"
            )
        except OSError as exc:
            return Outcome.failed(f"cannot run {command[0]}: {exc.strerror}")
        if finished.returncode == 0:
            return Outcome.ok()
        stderr = finished.stderr.decode("utf-8", "replace").strip()[-300:]
        return Outcome.failed(
            f"{command[0]} exited with {finished.returncode}: {stderr or 'no output'}"
        )
