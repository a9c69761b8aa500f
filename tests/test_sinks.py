"""Sink kinds, per-resource ordering and ``syncd deliveries`` against real parts."""

from __future__ import annotations

import base64
import json
import logging
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, insert, select, update

from connectors.base import EventRecord
from syncd import config as config_module
from syncd.cli import main
from syncd.delivery import DeliveryWorker
from syncd.models import Delivery, Event
from syncd.outbox import (
    LEASE_LOST,
    RetryPolicy,
    SinkRoute,
    claim,
    idempotency_key,
    record_outcome,
    replay,
)
from syncd.runtime import policy_of, route_of
from syncd.sink_config import SinkConfig
from syncd.sinks import build_sink
from syncd.sinks.base import Outcome
from syncd.sinks.http import sign
from syncd.store import Store, record_events
from tests.delivery_support import (
    LEASE,
    T0,
    Clock,
    drain,
    make_worker,
    rows,
    verify_standard,
)
from tests.e2e.sink_server import Response, SinkServer

pytestmark = pytest.mark.usefixtures("restore_logging")

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "whsec_" + base64.b64encode(b"sink-test-secret-0123456789").decode()


def http_sink(url: str, **settings: Any) -> SinkConfig:
    table = {"name": "app", "kind": "http", "url": url, "secret": SECRET}
    return SinkConfig.model_validate({**table, "timeout": "2s", **settings})


def log_events(
    store: Store, specs: list[tuple[str, str | None, int]], seen_at: datetime = T0
) -> list[int]:
    """Log events given as (key, resource, seconds after T0); return offsets."""
    records = [
        EventRecord(
            key=key,
            type="customer.updated",
            occurred_at=T0 + timedelta(seconds=at),
            payload=json.dumps({"id": key}),
            resource=resource,
        )
        for key, resource, at in specs
    ]
    with store.session() as session:
        result = record_events(session, "payments", "webhook", records, seen_at)
    return result.new_offsets


def key_of(name: str) -> str:
    return idempotency_key("payments", name)


def delivered_names(server: SinkServer) -> list[str]:
    return [json.loads(r.body)["key"] for r in server.delivered()]


# http sink


def test_sign_matches_vectors():
    """sign() reproduces the single-signature Standard Webhooks vectors."""
    path = FIXTURES / "standard-webhooks" / "signature-vectors.json"
    vectors = json.loads(path.read_text(encoding="utf-8"))["vectors"]
    chosen = ("stdwh-sign-function", "stdwh-secret-without-prefix")
    checked = 0
    for vector in vectors:
        if vector["id"] not in chosen:
            continue
        headers = vector["headers"]
        signature = sign(
            vector["secret"],
            headers["webhook-id"],
            int(headers["webhook-timestamp"]),
            vector["body"].encode(),
        )
        assert signature == headers["webhook-signature"], vector["id"]
        checked += 1
    assert checked == 2


def test_http_request_verifies(store, sink_server):
    """The POST carries a key, timestamp and signature that verify independently."""
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])
    worker = make_worker(store, settings, Clock())

    assert drain(worker) == 1

    [request] = sink_server.received
    assert request.headers["webhook-id"] == key_of("evt_1")
    assert request.headers["webhook-timestamp"] == str(int(T0.timestamp()))
    assert request.headers["content-type"] == "application/json"
    assert verify_standard(SECRET, request.headers, request.body)
    assert not verify_standard(SECRET, request.headers, request.body + b" ")
    assert json.loads(request.body)["id"] == key_of("evt_1")


def test_http_custom_headers_cannot_override(store, sink_server):
    """Configured headers are sent, but never replace the webhook-id."""
    settings = http_sink(
        sink_server.url, headers={"Authorization": "Bearer t", "webhook-id": "x"}
    )
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])

    drain(make_worker(store, settings, Clock()))

    [request] = sink_server.received
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["webhook-id"] == key_of("evt_1")


def test_http_body_not_read(store, sink_server):
    """A 2xx counts once its headers arrive, however slowly the body follows."""
    settings = http_sink(sink_server.url, timeout="500ms")
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])
    sink_server.script(Response(body=b"x" * 30, drip=0.1))
    started = time.monotonic()
    handled = drain(make_worker(store, settings, Clock()))
    elapsed = time.monotonic() - started

    [row] = rows(store)
    assert handled == 1
    assert row.status == "delivered"
    assert elapsed < 1.5


def test_http_errors_hide_url_secrets(store, sink_server, caplog):
    """Errors and logs name the sink's origin, without credentials, path or query."""
    base = sink_server.base_url.replace("http://", "http://user:pw-secret@")
    settings = http_sink(f"{base}/hooks/path-secret?token=query-secret&v=")
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])
    sink_server.fail_next(1, 503)
    caplog.set_level(logging.INFO, logger="syncd")

    drain(make_worker(store, settings, Clock()))

    [row] = rows(store)
    assert sink_server.received[0].path == "/hooks/path-secret?token=query-secret&v="
    assert row.last_error == f"POST to {sink_server.base_url}/… answered 503"
    for secret in ("user", "pw-secret", "path-secret", "query-secret"):
        assert secret not in caplog.text, secret
        assert secret not in row.last_error, secret


def test_http_error_bare_origin(store, sink_server):
    """A sink URL with no path is named as it is, with nothing marked as left out."""
    settings = http_sink(sink_server.base_url)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])
    sink_server.fail_next(1, 500)

    drain(make_worker(store, settings, Clock()))

    [row] = rows(store)
    assert row.last_error == f"POST to {sink_server.base_url} answered 500"


def test_sink_timeout_bounds():
    """A zero or over-long sink timeout is rejected, naming the key."""
    for value in ("0s", "2h"):
        with pytest.raises(config_module.ConfigError) as raised:
            config_module.parse(
                {"sinks": {"app": {"kind": "jsonl", "path": "/x", "timeout": value}}}
            )
        assert "sinks.app.timeout" in str(raised.value.problems), value


# leases


def test_lost_lease_skipped(store, sink_server):
    """A worker skips a claimed row whose lease passed to another worker meanwhile."""
    settings = http_sink(sink_server.url, ordering="none")
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0), ("evt_2", None, 1)])
    clock = Clock()
    first = make_worker(store, settings, clock, lease=timedelta(seconds=60))
    second = make_worker(store, settings, clock, lease=timedelta(seconds=60))
    overtaken: list[Any] = []

    def overtake(request: Any) -> None:
        # The first delivery outlasts the lease, and the second worker runs.
        if not overtaken:
            overtaken.append(request)
            clock.advance(120)
            second.run_once()

    sink_server.on_request = overtake
    first.run_once()

    counts = sink_server.counts()
    assert counts[key_of("evt_1")] == 2
    assert counts[key_of("evt_2")] == 1
    assert [row.status for row in rows(store)] == ["delivered", "delivered"]


def test_late_failure_keeps_new_lease(store):
    """A failure recorded after the lease passed on leaves the new holder's lease."""
    store.sink_routes = [SinkRoute("app")]
    log_events(store, [("evt_1", None, 0)])
    lease = timedelta(seconds=60)
    with store.session() as session:
        first = claim(session, "app", "a", T0, lease=lease, limit=1, ordered=True)
    with store.session() as session:
        later = T0 + timedelta(seconds=120)
        second = claim(session, "app", "b", later, lease=lease, limit=1, ordered=True)
    with store.session() as session:
        row = session.get(Delivery, first[0])
        status = record_outcome(
            session,
            row,
            Outcome.failed("POST answered 500"),
            RetryPolicy(),
            T0 + timedelta(seconds=121),
            random.Random(1),
            owner="a",
        )
    with store.session() as session:
        later = T0 + timedelta(seconds=122)
        third = claim(session, "app", "c", later, lease=lease, limit=1, ordered=True)

    [row] = rows(store)
    assert second == first
    assert status == LEASE_LOST
    assert third == []
    assert row.lease_owner == "b"
    assert row.attempts == 0


def test_worker_outlives_pool_timeout(store, sink_server):
    """A worker thread keeps running through a pool timeout and then delivers."""
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    store.engine.dispose()
    store.engine = create_engine(
        store.engine.url, pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    worker = DeliveryWorker(
        store,
        build_sink(settings),
        route_of(settings),
        policy_of(settings),
        idle_wait=0.05,
    )
    held = store.engine.connect()
    worker.start()
    try:
        time.sleep(0.5)
        held.close()
        log_events(store, [("evt_1", None, 0)], datetime.now(UTC))
        wait_for(lambda: len(sink_server.delivered()) == 1)
    finally:
        worker.stop()
        store.engine.dispose()

    assert sink_server.delivered_ids() == [key_of("evt_1")]


# jsonl sink


def jsonl_sink(path: Path) -> SinkConfig:
    return SinkConfig(name="file", kind="jsonl", path=str(path))


def test_jsonl_appends_lines(tmp_path):
    """Each delivery appends one JSON line, newlines in the body folded."""
    path = tmp_path / "events.jsonl"
    sink = build_sink(jsonl_sink(path))
    first = sink.deliver(b'{\n  "id": "a"\n}', "key_a", 0)
    second = sink.deliver(b'{"id": "b"}', "key_b", 0)
    sink.close()

    lines = path.read_bytes().split(b"\n")
    assert first.delivered
    assert second.delivered
    assert lines[-1] == b""
    assert [json.loads(line)["id"] for line in lines[:-1]] == ["a", "b"]


def test_jsonl_torn_line_isolated(tmp_path):
    """A half-written last line stays on its own, and the next record is whole."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"id": "old"}\n{"id": "torn", "pay')
    sink = build_sink(jsonl_sink(path))
    outcome = sink.deliver(b'{"id": "new"}', "key_new", 0)
    sink.close()

    lines = path.read_bytes().decode().splitlines()
    assert outcome.delivered
    assert lines[1] == '{"id": "torn", "pay'
    assert json.loads(lines[2]) == {"id": "new"}


SHORT_WRITE_SCRIPT = """
import resource, signal, sys
from syncd.sink_config import SinkConfig
from syncd.sinks import build_sink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
sink = build_sink(SinkConfig(name="file", kind="jsonl", path=sys.argv[1]))
small = sink.deliver(b'{"id": "small"}', "k1", 0)
big = sink.deliver(b'{"id": "big", "pad": "' + b"x" * 200 + b'"}', "k2", 0)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
after = sink.deliver(b'{"id": "after"}', "k3", 0)
print(small.delivered, big.delivered, after.delivered)
"""


def test_jsonl_short_write_fails(tmp_path):
    """A write cut short by the file size limit is a failure, not a delivery."""
    path = tmp_path / "events.jsonl"
    finished = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    lines = path.read_text().splitlines()
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.split() == ["True", "False", "True"]
    assert json.loads(lines[-1]) == {"id": "after"}


def test_jsonl_follows_rotation(tmp_path):
    """After the file is renamed away, records go to a new file at the path."""
    path = tmp_path / "events.jsonl"
    sink = build_sink(jsonl_sink(path))
    sink.deliver(b'{"id": "a"}', "key_a", 0)
    path.rename(tmp_path / "events.jsonl.1")
    sink.deliver(b'{"id": "b"}', "key_b", 0)
    sink.close()

    assert path.read_bytes() == b'{"id": "b"}\n'
    assert (tmp_path / "events.jsonl.1").read_bytes() == b'{"id": "a"}\n'


# command sink


def command_sink(command: list[str], timeout: str = "5s") -> SinkConfig:
    return SinkConfig(name="cmd", kind="command", command=command, timeout=timeout)


def test_command_exit_zero_delivers(tmp_path):
    """Exit 0 is a delivery, and the program gets the body and the key."""
    out = tmp_path / "out"
    script = 'cat > "$1"; printf %s "$SYNCD_IDEMPOTENCY_KEY" > "$1.key"'
    sink = build_sink(command_sink(["sh", "-c", script, "sh", str(out)]))
    outcome = sink.deliver(b'{"id": "a"}', "syncd_key", 0)

    assert outcome.delivered
    assert out.read_bytes() == b'{"id": "a"}'
    assert (tmp_path / "out.key").read_text() == "syncd_key"


def test_command_failure_keeps_stderr(store):
    """A non-zero exit fails the attempt with the program's stderr in last_error."""
    settings = command_sink(["sh", "-c", "echo 'disk quota exceeded' >&2; exit 3"])
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)])

    drain(make_worker(store, settings, Clock()))

    [row] = rows(store)
    assert row.status == "pending"
    assert row.attempts == 1
    assert "exited with 3" in row.last_error
    assert "disk quota exceeded" in row.last_error


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """Return whether a process has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_command_timeout_kills_group(tmp_path):
    """A program past the timeout is killed with its children, and the attempt fails."""
    pidfile = tmp_path / "pid"
    script = 'sleep 30 & echo $! > "$1"; wait'
    sink = build_sink(command_sink(["sh", "-c", script, "sh", str(pidfile)], "300ms"))
    started = time.monotonic()
    outcome = sink.deliver(b"{}", "k", 0)
    elapsed = time.monotonic() - started

    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not outcome.delivered
    assert "killed" in outcome.error
    assert elapsed < 3
    assert _gone(child)


def test_command_close_kills_running(tmp_path):
    """close() ends a program still running, so a stopping daemon leaves none."""
    pidfile = tmp_path / "pid"
    script = 'echo $$ > "$1"; sleep 30'
    sink = build_sink(command_sink(["sh", "-c", script, "sh", str(pidfile)], "60s"))
    outcomes = []
    thread = threading.Thread(target=lambda: outcomes.append(sink.deliver(b"", "k", 0)))
    started = time.monotonic()
    thread.start()
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    sink.close()
    thread.join(10)
    elapsed = time.monotonic() - started

    assert _gone(int(pidfile.read_text()))
    assert elapsed < 5
    assert not outcomes[0].delivered
    assert "killed by signal 9" in outcomes[0].error


def test_command_missing_program():
    """A program that does not exist fails the attempt with a clear error."""
    sink = build_sink(command_sink(["/nonexistent/syncd-sink"]))
    outcome = sink.deliver(b"{}", "k", 0)
    assert not outcome.delivered
    assert "/nonexistent/syncd-sink" in outcome.error


# per-resource ordering


def test_failure_holds_own_resource(store, sink_server):
    """A failing a2 delays a3 but not b1, and the sink sees A in log order."""
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    log_events(
        store,
        [
            ("a1", "cus_a", 0),
            ("a2", "cus_a", 1),
            ("a3", "cus_a", 2),
            ("b1", "cus_b", 3),
        ],
    )
    sink_server.script(Response(500), Response(500), webhook_id=key_of("a2"))
    clock = Clock()
    worker = make_worker(store, settings, clock)

    drain(worker)
    before_a2 = delivered_names(sink_server)
    clock.advance(3600)
    drain(worker)
    clock.advance(3600)
    drain(worker)

    assert before_a2 == ["a1", "b1"]
    assert sink_server.counts()[key_of("a2")] == 3
    assert sink_server.counts()[key_of("a3")] == 1
    assert delivered_names(sink_server) == ["a1", "b1", "a2", "a3"]


def test_unordered_does_not_wait(store, sink_server):
    """With ordering = "none", a3 is delivered while a2 still fails."""
    settings = http_sink(sink_server.url, ordering="none")
    store.sink_routes = [route_of(settings)]
    log_events(store, [("a1", "cus_a", 0), ("a2", "cus_a", 1), ("a3", "cus_a", 2)])
    sink_server.script(Response(500), webhook_id=key_of("a2"))
    clock = Clock()
    worker = make_worker(store, settings, clock)

    drain(worker)
    first_round = delivered_names(sink_server)
    clock.advance(3600)
    drain(worker)

    assert first_round == ["a1", "a3"]
    assert delivered_names(sink_server) == ["a1", "a3", "a2"]


def test_dead_row_stops_holding(store, sink_server):
    """Once an earlier event of a resource is dead, later ones are delivered."""
    settings = http_sink(sink_server.url, max_attempts=2)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("a1", "cus_a", 0), ("a2", "cus_a", 1)])
    sink_server.script(Response(500), Response(500), webhook_id=key_of("a1"))
    clock = Clock()
    worker = make_worker(store, settings, clock)

    for _ in range(3):
        drain(worker)
        clock.advance(3600)

    assert [r.status for r in rows(store)] == ["dead", "delivered"]
    assert delivered_names(sink_server) == ["a2"]


def test_older_news_superseded(store, sink_server):
    """An older event recovered after a newer one was delivered is marked superseded."""
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    clock = Clock()
    worker = make_worker(store, settings, clock)
    log_events(store, [("sub_updated", "subscription:sub_1", 5)])
    drain(worker)
    log_events(store, [("sub_created", "subscription:sub_1", 0)])
    log_events(store, [("sub_other", "subscription:sub_2", 0)])
    drain(worker)

    bodies = {
        json.loads(r.body)["key"]: json.loads(r.body) for r in sink_server.received
    }
    assert bodies["sub_updated"]["superseded"] is False
    assert bodies["sub_created"]["superseded"] is True
    assert bodies["sub_other"]["superseded"] is False


# syncd deliveries


def write_config(path: Path, database_url: str, sinks: dict[str, str]) -> Path:
    tables = "".join(
        f'\n[sinks.{name}]\nkind = "http"\nurl = "{url}"\n'
        for name, url in sinks.items()
    )
    path.write_text(f'[daemon]\ndatabase = "{database_url}"\n{tables}')
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(
        main, list(args), prog_name="syncd", env={"SYNCD_CONFIG": None}
    )


def cli_json(*args: str) -> Any:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def now_clock() -> Clock:
    """Return a clock at the real time, for commands that use the real time."""
    return Clock(datetime.now(UTC))


def test_list_json_shows_rows(store, database_url, sink_server, tmp_path, now_clock):
    """deliveries list --json shows each row's status, attempts, key and error."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0), ("evt_2", None, 1)], now_clock())
    sink_server.script(Response(503), webhook_id=key_of("evt_2"))
    drain(make_worker(store, settings, now_clock))

    items = cli_json("deliveries", "list", "-c", str(config))
    failed = cli_json("deliveries", "list", "-c", str(config), "--status", "failed")

    assert [item["status"] for item in items] == ["delivered", "pending"]
    assert items[1]["attempts"] == 1
    assert items[1]["idempotency_key"] == key_of("evt_2")
    assert "503" in items[1]["last_error"]
    assert [item["key"] for item in failed] == ["evt_2"]


def test_list_failed_past_limit(store, database_url, sink_server, tmp_path, now_clock):
    """--status failed --limit N finds failed rows behind many untried ones."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    store.sink_routes = [route_of(http_sink(sink_server.url))]
    log_events(store, [(f"evt_{n}", None, n) for n in range(5)], now_clock())
    [late] = log_events(store, [("evt_late", None, 9)], now_clock())
    with store.session() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.event_offset == late)
            .values(attempts=1, last_error="POST answered 503")
        )

    failed = cli_json(
        "deliveries", "list", "-c", str(config), "--status", "failed", "--limit", "2"
    )

    assert [item["key"] for item in failed] == ["evt_late"]


def test_list_unknown_sink_warns(store, database_url, sink_server, tmp_path):
    """deliveries list --sink warns about a sink the configuration lacks."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})

    result = invoke("deliveries", "list", "-c", str(config), "--sink", "nope")

    assert result.exit_code == 0, result.output
    assert "warning: no sink 'nope' in the configuration" in result.stderr
    assert "configured: app" in result.stderr


def test_list_known_sink_no_warning(store, database_url, sink_server, tmp_path):
    """deliveries list --sink with a configured sink prints no warning."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})

    result = invoke("deliveries", "list", "-c", str(config), "--sink", "app")

    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr


def test_list_limit_out_of_range(store, database_url, sink_server, tmp_path):
    """deliveries list --limit above 2**63-1 is a usage error naming the range."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})

    result = invoke("deliveries", "list", "-c", str(config), "--limit", "9" * 23)

    assert result.exit_code == 2, result.output
    assert "'--limit'" in result.stderr
    assert "1<=x<=9223372036854775807" in result.stderr


def test_retry_id_makes_due(store, database_url, sink_server, tmp_path, now_clock):
    """retry ID makes one waiting row due now, and the next run delivers it."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)], now_clock())
    sink_server.script(Response(429, retry_after="3000"))
    worker = make_worker(store, settings, now_clock)
    drain(worker)
    [row] = rows(store)

    waiting = drain(worker)
    result = cli_json("deliveries", "retry", "-c", str(config), str(row.id))
    now_clock.now = datetime.now(UTC)
    after = drain(worker)

    assert waiting == 0
    assert result == {"retried": 1}
    assert after == 1
    assert sink_server.delivered_ids() == [key_of("evt_1")]


def test_retry_unknown_id_fails(store, database_url, sink_server, tmp_path):
    """retry with an ID that is not in the outbox exits non-zero and names it."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    result = invoke("deliveries", "retry", "-c", str(config), "4242")
    assert result.exit_code != 0
    assert "delivery 4242 not found" in result.stderr
    assert "due again" not in result.stdout


def test_retry_dead_unknown_sink_warns(store, database_url, sink_server, tmp_path):
    """retry --dead --sink with a sink not in the file warns and still runs."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})

    result = invoke("deliveries", "retry", "-c", str(config), "--dead", "--sink", "x")

    assert result.exit_code == 0, result.output
    assert "warning: no sink 'x' in the configuration" in result.stderr
    assert "dead deliveries are retried if any remain" in result.stderr
    assert "0 delivery(ies) due again" in result.stdout


@pytest.mark.parametrize("delivery_id", ["0", "9223372036854775808", "9" * 23])
def test_retry_id_out_of_range(database_url, sink_server, tmp_path, delivery_id):
    """retry with an ID outside 1 to 2**63-1 is a usage error naming the range."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    Store(database_url).dispose()

    result = invoke("deliveries", "retry", "-c", str(config), delivery_id)

    assert result.exit_code == 2, result.output
    assert "IDS" in result.stderr
    assert "1<=x<=9223372036854775807" in result.stderr


def test_replay_same_key(store, database_url, sink_server, tmp_path, now_clock):
    """replay delivers again with the same key, and backfills a sink added later."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    settings = http_sink(sink_server.url)
    store.sink_routes = [route_of(settings)]
    log_events(store, [("evt_1", None, 0)], now_clock() - timedelta(hours=3))
    log_events(store, [("evt_2", None, 1)], now_clock())
    worker = make_worker(store, settings, now_clock)
    drain(worker)
    write_config(
        config, database_url, {"app": sink_server.url, "late": sink_server.url}
    )

    replayed = cli_json(
        "deliveries", "replay", "-c", str(config), "--sink", "app", "--since", "1h"
    )
    backfilled = cli_json(
        "deliveries", "replay", "-c", str(config), "--sink", "late", "--since", "1d"
    )
    now_clock.now = datetime.now(UTC)
    drain(worker)
    late = rows(store)[2:]

    assert replayed == {"replayed": 1}
    assert backfilled == {"replayed": 2}
    assert sink_server.delivered_ids() == [
        key_of("evt_1"),
        key_of("evt_2"),
        key_of("evt_2"),
    ]
    assert [row.sink for row in late] == ["late", "late"]
    assert [row.status for row in late] == ["pending", "pending"]


def test_retry_keeps_live_lease(store, database_url, sink_server, tmp_path):
    """retry of a row a worker is delivering does not let a second worker claim it."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    store.sink_routes = [route_of(http_sink(sink_server.url))]
    now = datetime.now(UTC)
    log_events(store, [("evt_1", None, 0)], now)
    with store.session() as session:
        first = claim(session, "app", "w1", now, lease=LEASE, limit=5, ordered=True)

    result = invoke("deliveries", "retry", "-c", str(config), str(first[0]))
    later = datetime.now(UTC)
    with store.session() as session:
        second = claim(session, "app", "w2", later, lease=LEASE, limit=5, ordered=True)

    assert result.exit_code == 0, result.output
    assert first != []
    assert second == []


def test_replay_unknown_sink(store, database_url, sink_server, tmp_path):
    """replay names the configured sinks when --sink is unknown."""
    config = write_config(tmp_path / "c.toml", database_url, {"app": sink_server.url})
    result = invoke(
        "deliveries", "replay", "-c", str(config), "--sink", "nope", "--since", "1h"
    )
    assert result.exit_code == 2
    assert "app" in result.output


def test_replay_many_events(store):
    """Replay of 20,000 events makes every row due within seconds."""
    count = 20_000
    events = [
        {
            "provider": "payments",
            "key": f"evt_{n}",
            "type": "invoice.paid",
            "occurred_at": T0,
            "first_seen_at": T0,
            "first_source": "poll",
            "duplicates": 0,
            "payload": "{}",
        }
        for n in range(count)
    ]
    with store.session() as session:
        session.execute(insert(Event), events)
    delivered = {
        "sink": "late",
        "status": "delivered",
        "created_at": T0,
        "next_attempt_at": T0,
    }
    with store.session() as session:
        offsets = session.execute(select(Event.offset).limit(2)).scalars().all()
        session.execute(
            insert(Delivery), [dict(delivered, event_offset=o) for o in offsets]
        )
    started = time.monotonic()
    with store.session() as session:
        made_due = replay(session, SinkRoute("late"), T0, T0)
    elapsed = time.monotonic() - started

    statuses = [row.status for row in rows(store)]
    assert made_due == count
    assert len(statuses) == count
    assert set(statuses) == {"pending"}
    assert elapsed < 10
