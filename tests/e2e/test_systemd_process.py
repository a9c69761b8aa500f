"""``syncd run`` under a simulated systemd: sd_notify and socket activation."""

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

from syncd import config as config_module
from syncd.daemon import Daemon
from syncd.runtime import Runtime
from tests.e2e.support import API_KEY, WEBHOOK_SECRET
from tests.e2e.test_process import _free_port, _wait_healthy, _write_config

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 400_000  # pings every 0.2 s


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TEST_STRIPE_KEY=API_KEY, TEST_STRIPE_WHSEC=WEBHOOK_SECRET)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS"):
        env.pop(name, None)
    env.update(extra)
    return env


def _messages(sock: socket.socket, until: str, timeout: float = 20) -> list[str]:
    """Collect datagrams until one contains the line ``until``."""
    received: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            datagram = sock.recv(4096).decode()
        except TimeoutError:
            break
        received.append(datagram)
        if until in datagram.splitlines():
            return received
    raise AssertionError(f"no {until} within {timeout}s; received {received}")


@pytest.fixture
def notify_socket(tmp_path: Path):
    """Bind the datagram socket that plays systemd's notification socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_notify_lifecycle(database_url, tmp_path, notify_socket):
    """READY=1 comes once healthy, then watchdog pings, then STOPPING=1."""
    port = _free_port()
    config = _write_config(tmp_path, database_url, port)
    env = _env(
        NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC=str(WATCHDOG_USEC)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "run", "-c", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = _messages(notify_socket, "READY=1")
        health = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code
        pings = _messages(notify_socket, "WATCHDOG=1", timeout=5)
        more = _messages(notify_socket, "WATCHDOG=1", timeout=5)
        process.send_signal(signal.SIGTERM)
        stopping = _messages(notify_socket, "STOPPING=1")
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)

    assert health == 200
    assert any(line.startswith("STATUS=") for line in ready[-1].splitlines())
    assert pings[-1] == "WATCHDOG=1"
    assert more[-1] == "WATCHDOG=1"
    assert "STOPPING=1" in stopping[-1].splitlines()
    assert process.returncode == 0, stderr


def test_socket_activation(database_url, tmp_path):
    """With LISTEN_FDS=1 the daemon serves on fd 3, not on its listen address."""
    configured = _free_port()
    config = _write_config(tmp_path, database_url, configured)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    # The wrapper moves the socket to fd 3 and sets LISTEN_PID to its own pid,
    # which exec keeps for syncd, as systemd does for the service's process.
    wrapper = (
        f"import os, sys; os.dup2({fd}, 3); os.close({fd}); "
        "os.environ['LISTEN_PID'] = str(os.getpid()); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", wrapper, "-m", "syncd.cli", "run", "-c", str(config)],
        env=_env(LISTEN_FDS="1"),
        pass_fds=[fd],
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()
    try:
        _wait_healthy(port, process)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{configured}/healthz")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert f"listening for webhooks on 127.0.0.1:{port}" in stderr


def test_dead_part_names_a_stopped_thread(database_url):
    """The watchdog's check names the writer once its thread has ended."""
    config = config_module.parse({"daemon": {"database": database_url}})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    daemon = Daemon(Runtime.open(config), sock=sock)
    thread = daemon.start_in_thread()
    try:
        healthy = daemon._dead_part()
        daemon.writer.stop()
        dead = daemon._dead_part()
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
    assert healthy is None
    assert dead == "the thread that commits webhooks"
