"""Reloading the configuration while the daemon serves webhooks."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from syncd import config as config_module
from syncd.daemon import Daemon
from syncd.runtime import Runtime
from syncd.simulator import SimulatedStripe
from tests.e2e.support import API_KEY
from tests.e2e.test_process import _free_port, _wait_healthy

pytestmark = pytest.mark.e2e

SECRETS = {"payments": "whsec_payments_1", "billing": "whsec_billing_1"}
_SEEDS = itertools.count(1)


def _sender(provider: str, secret: str | None = None) -> SimulatedStripe:
    return SimulatedStripe(
        api_key=API_KEY,
        webhook_secret=secret or SECRETS[provider],
        seed=next(_SEEDS),
    )


def _provider_table(name: str, directory: Path, secret: str | None = None) -> str:
    secret_file = directory / f"{name}.secret"
    secret_file.write_text(secret or SECRETS[name], encoding="utf-8")
    return f"""
[providers.{name}]
connector = "stripe"
api_base_url = "http://127.0.0.1:9"
api_token = "{API_KEY}"
webhook_secret = {{ file = "{secret_file.name}" }}
reconcile_interval = "1h"
"""


def _write(path: Path, database_url: str, port: int, *tables: str) -> Path:
    daemon = f'[daemon]\ndatabase = "{database_url}"\nlisten = "127.0.0.1:{port}"\n'
    path.write_text(daemon + "".join(tables), encoding="utf-8")
    return path


def _post(port: int, provider: str, sender: SimulatedStripe) -> int:
    body = sender.webhook_body(sender.emit("invoice.paid"))
    response = httpx.post(
        f"http://127.0.0.1:{port}/webhooks/{provider}",
        content=body,
        headers={"Stripe-Signature": sender.sign(body)},
        timeout=10,
    )
    return response.status_code


class _Load(threading.Thread):
    """POSTs signed webhooks to one provider until stopped; keeps every status."""

    def __init__(self, port: int, provider: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.provider = provider
        self.sender = _sender(provider)
        self.statuses: list[int | str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.statuses.append(_post(self.port, self.provider, self.sender))
            except httpx.TransportError as exc:
                self.statuses.append(type(exc).__name__)

    def stop(self) -> list[int | str]:
        self.halt.set()
        self.join(timeout=30)
        return self.statuses


def _start(config: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "syncd.cli", "run", "-c", str(config)],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return stderr


def _wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("the condition did not hold within the time allowed")


def test_sighup_swaps_providers_under_load(database_url, tmp_path):
    """SIGHUP applies a new provider set; no webhook of a kept provider fails."""
    port = _free_port()
    config = tmp_path / "config.toml"
    payments = _provider_table("payments", tmp_path)
    legacy = _provider_table("legacy", tmp_path, secret="whsec_legacy_1")
    _write(config, database_url, port, payments, legacy)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    process = _start(config, NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    try:
        _wait_healthy(port, process)
        assert _post(port, "billing", _sender("billing")) == 404
        load = _Load(port, "payments")
        load.start()
        _wait_for(lambda: len(load.statuses) >= 5)

        _write(
            config,
            database_url,
            port + 1,
            payments,
            _provider_table("billing", tmp_path),
        )
        process.send_signal(signal.SIGHUP)
        _wait_for(lambda: _post(port, "billing", _sender("billing")) == 200)
        sent_after = len(load.statuses)
        _wait_for(lambda: len(load.statuses) >= sent_after + 5)
        statuses = load.stop()
        legacy_status = _post(port, "legacy", _sender("legacy", "whsec_legacy_1"))
        datagrams = _datagrams(notify)
    finally:
        stderr = _stop(process)
        notify.close()

    assert set(statuses) == {200}, statuses
    assert legacy_status == 404
    assert "providers added: billing; removed: legacy" in stderr
    assert "daemon.listen changed" in stderr
    assert "restart" in stderr.split("daemon.listen changed", 1)[1].splitlines()[0]
    reloading = [d for d in datagrams if "RELOADING=1" in d.splitlines()]
    assert reloading and any(
        line.startswith("MONOTONIC_USEC=") for line in reloading[0].splitlines()
    )
    after = datagrams[datagrams.index(reloading[0]) + 1 :]
    assert any("READY=1" in d.splitlines() for d in after), datagrams
    assert process.returncode == 0, stderr


def _datagrams(sock: socket.socket) -> list[str]:
    sock.settimeout(0.5)
    received = []
    while True:
        try:
            received.append(sock.recv(4096).decode())
        except TimeoutError:
            return received


def test_sighup_broken_file_keeps_config(database_url, tmp_path):
    """A file with errors is logged with its problem; webhooks keep their 200."""
    port = _free_port()
    config = _write(
        tmp_path / "config.toml",
        database_url,
        port,
        _provider_table("payments", tmp_path),
    )
    process = _start(config)
    try:
        _wait_healthy(port, process)
        config.write_text(
            config.read_text() + '\n[providers.shop]\nconnector = "no-such"\n'
        )
        process.send_signal(signal.SIGHUP)
        time.sleep(1)
        status = _post(port, "payments", _sender("payments"))
    finally:
        stderr = _stop(process)

    assert status == 200
    assert "reload of" in stderr
    assert "the running configuration stays" in stderr
    assert "no-such" in stderr
    assert process.returncode == 0, stderr


@pytest.fixture
def running(database_url, tmp_path):
    """A daemon in a thread, started from a configuration file on disk."""
    started: list[Daemon] = []

    def start(*tables: str) -> tuple[Daemon, Path, int]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        path = _write(tmp_path / "config.toml", database_url, port, *tables)
        daemon = Daemon(Runtime.open(config_module.load(path)), sock=sock)
        daemon.thread = daemon.start_in_thread()
        started.append(daemon)
        return daemon, path, port

    yield start
    for daemon in started:
        daemon.request_stop()
        daemon.thread.join(timeout=30)


def _rewrite(path: Path, database_url: str, port: int, *tables: str) -> None:
    _write(path, database_url, port, *tables)


def test_reload_rotates_webhook_secret(running, database_url, tmp_path):
    """After a reload the new secret verifies and the old one gets 401."""
    daemon, path, port = running(_provider_table("payments", tmp_path))
    old, new = _sender("payments"), _sender("payments", "whsec_payments_2")
    assert _post(port, "payments", old) == 200

    _rewrite(
        path,
        database_url,
        port,
        _provider_table("payments", tmp_path, "whsec_payments_2"),
    )
    assert daemon.reload() is True

    assert _post(port, "payments", new) == 200
    assert _post(port, "payments", old) == 401


def test_reload_poll_becomes_reconcile(running, database_url, tmp_path):
    """A provider given a webhook secret changes from a poll job to a reconcile."""
    polled = _provider_table("payments", tmp_path).replace(
        'webhook_secret = { file = "payments.secret" }\n', 'poll_interval = "1h"\n'
    )
    daemon, path, port = running(polled)
    assert daemon.scheduler.get_job("poll:payments") is not None

    _rewrite(path, database_url, port, _provider_table("payments", tmp_path))
    daemon.reload()

    assert daemon.scheduler.get_job("poll:payments") is None
    assert daemon.scheduler.get_job("reconcile:payments") is not None
    assert _post(port, "payments", _sender("payments")) == 200


def test_reload_swaps_sinks(running, database_url, tmp_path, caplog):
    """A sink added by reload receives new events; a removed one's worker stops."""
    payments = _provider_table("payments", tmp_path)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    def sink(name: str, file: Path) -> str:
        return f'\n[sinks.{name}]\nkind = "jsonl"\npath = "{file}"\n'

    daemon, path, port = running(payments, sink("first", first))
    sender = _sender("payments")
    before = _post(port, "payments", sender)
    _wait_for(lambda: first.exists() and first.read_text().count("\n") == 1)
    old_worker = daemon.workers["first"]

    _rewrite(path, database_url, port, payments, sink("second", second))
    with caplog.at_level(logging.INFO, logger="syncd.daemon"):
        daemon.reload()
    after = _post(port, "payments", sender)
    _wait_for(lambda: second.exists() and second.read_text().count("\n") == 1)

    assert (before, after) == (200, 200)
    assert not old_worker.is_alive()
    assert list(daemon.workers) == ["second"]
    assert first.read_text().count("\n") == 1
    delivered = json.loads(second.read_text())
    assert delivered["provider"] == "payments"
    assert "syncd deliveries replay --sink second" in caplog.text
    assert "sink first removed" in caplog.text


def test_reload_without_file_skipped(database_url, caplog):
    """A daemon built from a configuration with no file skips the reload."""
    config = config_module.parse({"daemon": {"database": database_url}})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    daemon = Daemon(Runtime.open(config), sock=sock)
    thread = daemon.start_in_thread()
    try:
        with caplog.at_level(logging.WARNING, logger="syncd.daemon"):
            assert daemon.reload() is False
    finally:
        daemon.request_stop()
        thread.join(timeout=30)
    assert "no file" in caplog.text


def test_reload_keeps_providers_on_empty_file(running, tmp_path, caplog):
    """A file emptied while being written does not remove every provider."""
    daemon, path, port = running(_provider_table("payments", tmp_path))
    path.write_text("", encoding="utf-8")

    with caplog.at_level(logging.ERROR, logger="syncd.daemon"):
        applied = daemon.reload()

    assert applied is False
    assert "names no [providers.NAME] table" in caplog.text
    assert _post(port, "payments", _sender("payments")) == 200


def test_reload_error_keeps_serving(running, tmp_path, caplog, monkeypatch):
    """An unexpected error while applying a file is logged; webhooks go on."""
    daemon, path, port = running(_provider_table("payments", tmp_path))

    def broken(*args: object) -> None:
        raise RuntimeError("sink could not be built")

    monkeypatch.setattr(daemon, "_apply_sinks", broken)
    with caplog.at_level(logging.ERROR, logger="syncd.daemon"):
        applied = daemon.reload()

    assert applied is False
    assert "stopped part-way" in caplog.text
    assert "sink could not be built" in caplog.text
    assert _post(port, "payments", _sender("payments")) == 200
