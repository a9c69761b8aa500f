"""``syncd run`` as a real process: graceful stop, and kill -9 after a 2xx."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from syncd.models import Event
from syncd.simulator import SimulatedStripe
from syncd.store import Store
from tests.e2e.support import API_KEY, WEBHOOK_SECRET

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(directory: Path, database_url: str, port: int) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f"""
[daemon]
database = "{database_url}"
listen = "127.0.0.1:{port}"

[providers.payments]
connector = "stripe"
api_base_url = "http://127.0.0.1:9"
api_token = {{ env = "TEST_STRIPE_KEY" }}
webhook_secret = {{ env = "TEST_STRIPE_WHSEC" }}
reconcile_interval = "1h"
""",
        encoding="utf-8",
    )
    return path


def _start(config: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TEST_STRIPE_KEY=API_KEY, TEST_STRIPE_WHSEC=WEBHOOK_SECRET)
    return subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "run", "-c", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_healthy(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("syncd run did not become healthy within 20 s")


def _post(simulator: SimulatedStripe, port: int, event: dict) -> int:
    body = simulator.webhook_body(event)
    response = httpx.post(
        f"http://127.0.0.1:{port}/webhooks/payments",
        content=body,
        headers={"Stripe-Signature": simulator.sign(body)},
    )
    return response.status_code


def _logged(database_url: str) -> list[str]:
    store = Store(database_url)
    with store.session() as session:
        keys = list(session.execute(select(Event.key)).scalars())
    store.dispose()
    return keys


@pytest.fixture
def simulator() -> SimulatedStripe:
    return SimulatedStripe(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=5)


def test_sigterm_stops_cleanly(database_url, tmp_path, simulator):
    """SIGTERM ends the daemon with exit code 0 after every step is logged."""
    port = _free_port()
    process = _start(_write_config(tmp_path, database_url, port))
    _wait_healthy(port, process)
    assert _post(simulator, port, simulator.emit("invoice.paid")) == 200

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0
    assert "syncd stopped" in stderr
    assert len(_logged(database_url)) == 1


def test_kill_after_2xx_loses_nothing(database_url, tmp_path, simulator):
    """Every webhook answered 2xx before a SIGKILL is in the log afterwards."""
    port = _free_port()
    config = _write_config(tmp_path, database_url, port)
    acknowledged: list[str] = []
    for _round in range(3):
        process = _start(config)
        _wait_healthy(port, process)
        for _ in range(15):
            event = simulator.emit("invoice.paid")
            if _post(simulator, port, event) == 200:
                acknowledged.append(event["id"])
        process.kill()
        process.communicate(timeout=30)

    logged = _logged(database_url)
    assert set(acknowledged) <= set(logged)
    assert len(logged) == len(set(logged))


def test_port_in_use_exits_naming_listen(database_url, tmp_path):
    """A listen address in use stops the start with a message naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = _start(_write_config(tmp_path, database_url, port))
        _, stderr = process.communicate(timeout=60)

    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "[daemon] listen" in stderr
    assert "poll" not in stderr
