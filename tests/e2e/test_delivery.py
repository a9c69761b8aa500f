"""Delivery to sinks end to end: retries, duplicates, crashes, dead sinks, workers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from connectors.base import EventRecord
from syncd import config as config_module
from syncd.cli import main
from syncd.daemon import Daemon
from syncd.models import Delivery, Event
from syncd.outbox import SinkRoute, idempotency_key
from syncd.runtime import Runtime, route_of
from syncd.sink_config import SinkConfig
from syncd.store import Store, record_events
from tests.delivery_support import (
    T0,
    Clock,
    drain,
    make_worker,
    rows,
    verify_standard,
)
from tests.e2e.sink_server import Response
from tests.e2e.support import API_KEY, WEBHOOK_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("restore_logging")]

SECRET = "whsec_" + base64.b64encode(b"delivery-e2e-secret-42").decode()


def log_events(store: Store, keys: list[str], seen_at: datetime = T0) -> None:
    records = [
        EventRecord(
            key=key, type="invoice.paid", occurred_at=T0, payload=f'{{"id": "{key}"}}'
        )
        for key in keys
    ]
    with store.session() as session:
        record_events(session, "payments", "webhook", records, seen_at)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.02)


# retries through the http sink


def test_http_retries_keep_key(store, sink_server):
    """500s, a timeout and a 429 are retried with one key, honouring Retry-After."""
    settings = SinkConfig(
        name="app", kind="http", url=sink_server.url, secret=SECRET, timeout="200ms"
    )
    store.sink_routes = [route_of(settings)]
    log_events(store, ["evt_1", "evt_2", "evt_3"])
    key = idempotency_key("payments", "evt_1")
    sink_server.script(
        Response(500),
        Response(500),
        Response(delay=3.0),
        Response(429, retry_after="120"),
        webhook_id=key,
    )
    clock = Clock()
    worker = make_worker(store, settings, clock)

    drain(worker)
    clock.advance(30)
    drain(worker)
    clock.advance(30)
    drain(worker)
    timed_out = rows(store)[0]
    clock.advance(30)
    drain(worker)
    clock.advance(119)
    early = drain(worker)
    clock.advance(2)
    late = drain(worker)

    first = rows(store)[0]
    attempts = [r for r in sink_server.received if r.webhook_id == key]
    assert [r.status for r in attempts] == [500, 500, 200, 429, 200]
    assert all(verify_standard(SECRET, r.headers, r.body) for r in sink_server.received)
    assert [json.loads(r.body)["attempt"] for r in attempts] == [1, 2, 3, 4, 5]
    assert "timed out" in timed_out.last_error
    assert early == 0
    assert late == 1
    assert first.attempts == 5
    assert [row.status for row in rows(store)] == ["delivered"] * 3
    # The slow attempt reached the receiver too: at-least-once, with one key.
    assert set(sink_server.delivered_ids()) == {
        idempotency_key("payments", name) for name in ("evt_1", "evt_2", "evt_3")
    }


def test_timestamps_follow_clock(store, sink_server):
    """Each attempt is signed with the worker clock's time of that attempt."""
    settings = SinkConfig(name="app", kind="http", url=sink_server.url, secret=SECRET)
    store.sink_routes = [route_of(settings)]
    log_events(store, ["evt_1"])
    sink_server.fail_next(1)
    clock = Clock()
    worker = make_worker(store, settings, clock)

    drain(worker)
    clock.advance(60)
    drain(worker)

    stamps = [int(r.headers["webhook-timestamp"]) for r in sink_server.received]
    start = int(T0.timestamp())
    assert stamps == [start, start + 60]


# duplicated webhooks give one delivery per sink


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def daemon_config(
    database_url: str, simulator: Any, sinks: dict[str, dict[str, Any]]
) -> config_module.Config:
    provider = {
        "connector": "stripe",
        "api_base_url": simulator.base_url,
        "api_token": API_KEY,
        "webhook_secret": WEBHOOK_SECRET,
        "reconcile_interval": "1h",
    }
    return config_module.parse(
        {
            "daemon": {"database": database_url},
            "providers": {"payments": provider},
            "sinks": sinks,
        }
    )


class RunningDaemon:
    """A Daemon serving on a free loopback port in a thread."""

    def __init__(self, config: config_module.Config, clock: Any) -> None:
        sock = _free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/webhooks/payments"
        self.daemon = Daemon(Runtime.open(config, clock=clock), sock=sock)
        self.thread = self.daemon.start_in_thread()

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout=30)


def post(simulator: Any, url: str, event: dict) -> int:
    body = simulator.webhook_body(event)
    headers = {"Stripe-Signature": simulator.sign(body)}
    with httpx.Client(trust_env=False) as client:
        return client.post(url, content=body, headers=headers).status_code


def post_together(simulator: Any, url: str, event: dict, copies: int) -> list[int]:
    """POST one webhook on several connections released at the same moment."""
    barrier = threading.Barrier(copies)
    statuses: list[int] = []

    def send() -> None:
        barrier.wait()
        statuses.append(post(simulator, url, event))

    threads = [threading.Thread(target=send) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_duplicates_one_delivery(database_url, simulator, clock, sink_server):
    """Repeated, concurrent and post-restart duplicates give one delivery per sink."""
    sinks = {
        name: {"kind": "http", "url": f"{sink_server.base_url}/{name}"}
        for name in ("app", "audit")
    }
    config = daemon_config(database_url, simulator, sinks)
    evt_3 = simulator.emit("invoice.paid")
    evt_4 = simulator.emit("invoice.paid")
    late = simulator.emit("invoice.paid")
    keys = {e["id"]: idempotency_key("payments", e["id"]) for e in (evt_3, evt_4, late)}

    def delivered_everywhere(event: dict) -> bool:
        key = keys[event["id"]]
        return all(key in sink_server.delivered_ids(f"/{n}") for n in sinks)

    running = RunningDaemon(config, clock)
    try:
        first = [post(simulator, running.url, evt_3)]
        wait_until(lambda: delivered_everywhere(evt_3))
        clock.advance(40)
        first.append(post(simulator, running.url, evt_3))
        together = post_together(simulator, running.url, evt_3, 4)
        together += post_together(simulator, running.url, evt_4, 4)
        wait_until(lambda: delivered_everywhere(evt_4))
    finally:
        running.stop()
    running = RunningDaemon(config, clock)
    try:
        after_restart = post(simulator, running.url, evt_3)
        post(simulator, running.url, late)
        wait_until(lambda: delivered_everywhere(late))
    finally:
        running.stop()

    store = Store(database_url)
    with store.session() as session:
        logged = Counter(session.execute(select(Event.key)).scalars())
    store.dispose()
    assert first == [200, 200]
    assert together == [200] * 8
    assert after_restart == 200
    assert logged == Counter(list(keys))
    for name in sinks:
        assert sink_server.counts(f"/{name}") == Counter(keys.values()), name


# a crash between delivery and recording its outcome

CRASH_CONFIG = """
[daemon]
database = "{database}"
listen = "127.0.0.1:{port}"

[providers.payments]
connector = "stripe"
api_base_url = "http://127.0.0.1:9"
api_token = {{ env = "TEST_STRIPE_KEY" }}
webhook_secret = {{ env = "TEST_STRIPE_WHSEC" }}
reconcile_interval = "1h"

[sinks.cmd]
kind = "command"
command = ["sh", "-c", {script}, "sh", "{directory}"]
"""

# Records stdin and the key, then, on the first run only, stops the daemon
# (SIGSTOP to its parent) before exiting 0, so that the test can kill the
# daemon after the delivery and before the outcome is recorded.
RECORD_THEN_STOP = (
    'cat > "$1/body.$$"; printf %s "$SYNCD_IDEMPOTENCY_KEY" > "$1/key.$$"; '
    'if [ ! -e "$1/stopped" ]; then touch "$1/stopped"; kill -STOP $PPID; fi'
)


def _start_daemon(config: Path, log: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, TEST_STRIPE_KEY=API_KEY, TEST_STRIPE_WHSEC=WEBHOOK_SECRET)
    with log.open("a") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "syncd.cli", "run", "-c", str(config)],
            env=env,
            stderr=stderr,
            text=True,
        )


def _wait_healthy(port: int, process: subprocess.Popen[str]) -> None:
    def healthy() -> bool:
        assert process.poll() is None
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout=20)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_crash_after_delivery_redelivers(database_url, tmp_path):
    """A kill after the command ran but before recording redelivers with one key."""
    from syncd.simulator import SimulatedStripe

    simulator = SimulatedStripe(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET, seed=9)
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        CRASH_CONFIG.format(
            database=database_url,
            port=port,
            script=json.dumps(RECORD_THEN_STOP),
            directory=tmp_path,
        )
    )
    event = simulator.emit("invoice.paid")

    log = tmp_path / "syncd.log"
    process = _start_daemon(config, log)
    try:
        _wait_healthy(port, process)
        body = simulator.webhook_body(event)
        httpx.post(
            f"http://127.0.0.1:{port}/webhooks/payments",
            content=body,
            headers={"Stripe-Signature": simulator.sign(body)},
        )
        wait_until(lambda: _state(process.pid) == "T")
    finally:
        process.kill()
        process.wait(30)

    store = Store(database_url)
    [after_kill] = rows(store)
    # The daemon's lease lasts at least 5 minutes; end it as if that time passed.
    with store.session() as session:
        session.execute(
            update(Delivery).values(lease_until=datetime.now(UTC) - timedelta(1))
        )
    process = _start_daemon(config, log)
    try:
        wait_until(lambda: len(list(tmp_path.glob("key.*"))) == 2, timeout=20)
        wait_until(lambda: rows(store)[0].status == "delivered")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    store.dispose()

    keys = {path.read_text() for path in tmp_path.glob("key.*")}
    bodies = [json.loads(path.read_bytes()) for path in tmp_path.glob("body.*")]
    assert process.returncode == 0, log.read_text()[-2000:]
    assert after_kill.status == "pending"
    assert after_kill.attempts == 0
    assert keys == {idempotency_key("payments", event["id"])}
    assert [b["key"] for b in bodies] == [event["id"], event["id"]]


# a dead sink next to a healthy one


def write_config(path: Path, database_url: str, sinks: str) -> Path:
    path.write_text(f'[daemon]\ndatabase = "{database_url}"\n{sinks}')
    return path


def invoke_json(*args: str) -> Any:
    result = CliRunner().invoke(
        main, [*args, "--json"], prog_name="syncd", env={"SYNCD_CONFIG": None}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def sink_statuses(config: Path) -> dict[str, dict[str, Any]]:
    data = invoke_json("status", "-c", str(config))
    return {item["name"]: item for item in data["sinks"]}


def test_dead_sink_then_retry(database_url, sink_server, tmp_path):
    """A dead sink's rows end dead while another sink flows, then retry delivers."""
    sinks = f"""
[sinks.app]
kind = "http"
url = "{sink_server.base_url}/app"
max_attempts = 3

[sinks.audit]
kind = "http"
url = "{sink_server.base_url}/audit"
"""
    config_path = write_config(tmp_path / "config.toml", database_url, sinks)
    config = config_module.load(config_path)
    runtime = Runtime.open(config)
    store = runtime.store
    sink_server.default_by_path["/app"] = Response(500)
    started = datetime.now(UTC) - timedelta(minutes=10)
    clock = Clock(started)
    app = make_worker(store, config.sinks["app"], clock)
    audit = make_worker(store, config.sinks["audit"], clock)

    log_events(store, ["evt_1", "evt_2"], started)
    drain(app)
    drain(audit)
    while_failing = sink_statuses(config_path)
    log_events(store, ["evt_3"], started)
    for _ in range(3):
        clock.advance(7200)
        drain(app)
        drain(audit)
    when_dead = sink_statuses(config_path)
    retried = invoke_json("deliveries", "retry", "-c", str(config_path), "--dead")
    del sink_server.default_by_path["/app"]
    clock.now = datetime.now(UTC)
    drain(app)
    recovered = sink_statuses(config_path)
    runtime.close()

    assert while_failing["app"]["backlog"] == 2
    assert while_failing["app"]["oldest_pending_age_seconds"] >= 600
    assert while_failing["audit"]["backlog"] == 0
    assert while_failing["audit"]["delivered"] == 2
    assert when_dead["app"]["dead"] == 3
    assert when_dead["app"]["backlog"] == 0
    assert when_dead["app"]["oldest_pending_age_seconds"] is None
    assert when_dead["audit"]["delivered"] == 3
    assert retried == {"retried": 3}
    assert recovered["app"]["dead"] == 0
    assert recovered["app"]["delivered"] == 3
    assert len(sink_server.delivered_ids("/app")) == 3


# several worker processes on one outbox

WORKER_SCRIPT = """
import os, sys, time
from sqlalchemy import func, select
from syncd.delivery import DeliveryWorker
from syncd.models import Delivery
from syncd.outbox import RetryPolicy, SinkRoute
from syncd.sink_config import SinkConfig
from syncd.sinks import build_sink
from syncd.store import Store

url, sink_url, ready, go = sys.argv[1:5]
store = Store(url, create=False)
sink = build_sink(SinkConfig(name="app", kind="http", url=sink_url))
worker = DeliveryWorker(store, sink, SinkRoute("app"), RetryPolicy(), seed=1)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
handled = 0
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done = worker.run_once()
    handled += done
    if done:
        continue
    with store.session() as session:
        left = session.execute(
            select(func.count())
            .select_from(Delivery)
            .where(Delivery.status != "delivered")
        ).scalar_one()
    if left == 0:
        break
    time.sleep(0.01)
sink.close()
store.dispose()
print(handled)
"""


def test_two_processes_never_overlap(store, database_url, sink_server, tmp_path):
    """Two worker processes deliver every row once, in order, never twice at once."""
    store.sink_routes = [SinkRoute("app")]
    records = [
        EventRecord(
            key=f"r{resource}_{n}",
            type="customer.updated",
            occurred_at=T0 + timedelta(seconds=n),
            payload="{}",
            resource=f"customer:r{resource}",
        )
        for n in range(5)
        for resource in range(10)
    ]
    with store.session() as session:
        record_events(session, "payments", "webhook", records, T0)
    sink_server.default = Response(delay=0.02)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready.{n}" for n in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, database_url, sink_server.url]
            + [str(path), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in ready
    ]
    wait_until(lambda: all(path.exists() for path in ready), timeout=20)
    go.touch()
    outputs = [worker.communicate(timeout=60) for worker in workers]

    received = sink_server.received
    by_key: dict[str, list[tuple[float, float]]] = {}
    for request in received:
        key = json.loads(request.body)["key"]
        by_key.setdefault(key, []).append((request.started, request.finished or 0))
    handled = [int(out) for out, _ in outputs]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    assert sum(handled) == 50
    assert min(handled) > 0
    assert sorted(by_key) == sorted(r.key for r in records)
    assert max(len(spans) for spans in by_key.values()) == 1
    assert {row.status for row in rows(store)} == {"delivered"}
    for resource in range(10):
        spans = [by_key[f"r{resource}_{n}"][0] for n in range(5)]
        for earlier, later in zip(spans, spans[1:], strict=False):
            assert earlier[1] <= later[0], f"resource r{resource} out of order"
