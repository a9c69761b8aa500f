"""Stopping ``syncd run`` while a poll waits to retry an unreachable provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.test_process import _free_port, _wait_healthy

pytestmark = pytest.mark.e2e


def test_sigterm_ends_retry_wait(tmp_path):
    """SIGTERM ends a poll's retry backoff instead of waiting it out."""
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[daemon]
database = "sqlite:///{tmp_path / "syncd.db"}"
listen = "127.0.0.1:{port}"

[providers.ledger]
connector = "stripe"
api_base_url = "http://127.0.0.1:9"
api_token = {{ env = "TEST_LEDGER_KEY" }}
max_attempts = 20
max_retry_wait = "1m"
""",
        encoding="utf-8",
    )
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "-c", str(config)],
            env=dict(os.environ, TEST_LEDGER_KEY="sk_test_stop"),
            stderr=stderr,
            text=True,
        )
    try:
        _wait_healthy(port, process)
        deadline = time.monotonic() + 20
        while "attempt 2 failed" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)

    assert process.returncode == 0
    assert elapsed < 5, log.read_text()
    assert "syncd is stopping" in log.read_text()
