"""Tests of the connection limits on a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from syncd import config
from syncd.daemon import Daemon
from syncd.errors import ConfigError
from syncd.models import Event
from syncd.runtime import Runtime
from syncd.store import Store

SECRET = "whsec_limits_test_81c2"
URL = "/webhooks/payments"
# Bounds every socket wait, so a broken limit fails a test instead of hanging.
SOCKET_TIMEOUT = 10.0


def make_settings(database_url: str, **daemon: Any) -> config.Config:
    return config.parse(
        {
            "daemon": {"database": database_url, "listen": "127.0.0.1:0", **daemon},
            "providers": {
                "payments": {
                    "connector": "stripe",
                    "api_base_url": "http://127.0.0.1:9",
                    "webhook_secret": SECRET,
                }
            },
        }
    )


@contextmanager
def serve(database_url: str, **daemon: Any) -> Iterator[tuple[int, Daemon]]:
    """Run the daemon's webhook server on a free loopback port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    runtime = Runtime.open(make_settings(database_url, **daemon))
    running = Daemon(runtime, sock=listener)
    thread = running.start_in_thread()
    try:
        yield port, running
    finally:
        running.request_stop()
        thread.join(SOCKET_TIMEOUT)
        listener.close()


def connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    return conn


def event_body(event_id: str = "evt_limit") -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "invoice.paid",
        "created": int(time.time()),
    }
    return json.dumps(event).encode()


def request_head(body: bytes, path: str = URL, **extra: str) -> bytes:
    timestamp = int(time.time())
    digest = hmac.new(
        SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    headers = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Stripe-Signature": f"t={timestamp},v1={digest}",
        **extra,
    }
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(conn: socket.socket) -> bytes:
    """Read until the server closes the connection or a whole response is in."""
    data = b""
    while True:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
        head, separator, rest = data.partition(b"\r\n\r\n")
        if separator and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                return data


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def count_events(url: str) -> int:
    reader = Store(url, create=False)
    try:
        with reader.session() as session:
            return session.execute(select(func.count()).select_from(Event)).scalar_one()
    finally:
        reader.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'limits.db'}"


def test_config_defaults() -> None:
    """The [daemon] limits have safe defaults."""
    daemon = config.DaemonConfig()
    assert daemon.read_timeout == timedelta(seconds=30)
    assert daemon.max_connections == 200
    assert daemon.max_header_size == 16 * 1024
    assert daemon.max_url_length == 4096


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("read_timeout", "10ms", "at least '100ms'"),
        ("max_header_size", 100, "at least '1KiB'"),
        ("max_connections", 0, "greater than or equal to 1"),
        ("max_url_length", 10, "greater than or equal to 256"),
    ],
)
def test_config_rejects_limit(key: str, value: Any, message: str) -> None:
    """A limit too small to serve any webhook is a configuration error."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"daemon": {key: value}})
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"daemon.{key}: ")
    assert message in caught.value.problems[0]


def test_valid_webhook_stored(sqlite_url: str) -> None:
    """A prompt, signed webhook is stored through the real server."""
    body = event_body()
    with serve(sqlite_url) as (port, _daemon), connect(port) as conn:
        conn.sendall(request_head(body) + body)
        response = read_response(conn)
    assert status_of(response) == 200
    assert count_events(sqlite_url) == 1


def test_trickled_body_408(sqlite_url: str) -> None:
    """A body sent slower than read_timeout gets 408 and is not stored."""
    body = event_body()
    with (
        serve(sqlite_url, read_timeout="300ms") as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(request_head(body) + body[:5])
        started = time.monotonic()
        for byte in body[5:12]:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        response = read_response(conn)
        waited = time.monotonic() - started
    assert status_of(response) == 408
    assert b"read_timeout" in response
    assert waited < 5
    assert count_events(sqlite_url) == 0


def test_trickled_headers_closed(sqlite_url: str) -> None:
    """Headers sent slower than read_timeout get the connection closed."""
    body = event_body()
    head = request_head(body)
    with (
        serve(sqlite_url, read_timeout="300ms") as (port, _daemon),
        connect(port) as conn,
    ):
        started = time.monotonic()
        for index in range(8):
            try:
                conn.sendall(head[index : index + 1])
            except OSError:
                break
            time.sleep(0.1)
        response = read_response(conn)
        waited = time.monotonic() - started
    assert response == b""
    assert waited < 5
    assert count_events(sqlite_url) == 0


def test_trickled_second_request_closed(sqlite_url: str) -> None:
    """Headers of a second request on a kept-alive connection are timed too."""
    body = event_body()
    head = request_head(body)
    with (
        serve(sqlite_url, read_timeout="300ms") as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(head + body)
        first = read_response(conn)
        started = time.monotonic()
        for index in range(8):
            try:
                conn.sendall(head[index : index + 1])
            except OSError:
                break
            time.sleep(0.1)
        second = read_response(conn)
        waited = time.monotonic() - started
    assert status_of(first) == 200
    assert second == b""
    assert waited < 5


def test_silent_connection_closed(sqlite_url: str) -> None:
    """A connection that sends nothing is closed after read_timeout."""
    with (
        serve(sqlite_url, read_timeout="300ms") as (port, _daemon),
        connect(port) as conn,
    ):
        started = time.monotonic()
        response = read_response(conn)
        waited = time.monotonic() - started
    assert response == b""
    assert waited < 5


def test_concurrency_cap_503(sqlite_url: str) -> None:
    """A request beyond max_connections gets 503 and is not stored."""
    body = event_body()
    with (
        serve(sqlite_url, max_connections=2) as (port, _daemon),
        connect(port) as first,
        connect(port) as second,
        connect(port) as third,
    ):
        first.sendall(request_head(body)[:20])
        second.sendall(request_head(body)[:20])
        time.sleep(0.1)
        third.sendall(request_head(body) + body)
        response = read_response(third)
    assert status_of(response) == 503
    assert count_events(sqlite_url) == 0


def test_concurrency_frees_up(sqlite_url: str) -> None:
    """Once connections close, requests under max_connections are served again."""
    body = event_body()
    with serve(sqlite_url, max_connections=2) as (port, _daemon):
        for _ in range(3):
            with connect(port) as conn:
                conn.sendall(request_head(body) + body)
                response = read_response(conn)
            assert status_of(response) == 200
    assert count_events(sqlite_url) == 1


def test_oversized_headers_431(sqlite_url: str) -> None:
    """Headers over max_header_size sent at once get 431 and are not stored."""
    body = event_body()
    padding = "a" * 8192
    with (
        serve(sqlite_url, max_header_size="4KiB") as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(request_head(body, **{"X-Padding": padding}) + body)
        response = read_response(conn)
    assert status_of(response) == 431
    assert b"4096-byte limit" in response
    assert count_events(sqlite_url) == 0


def test_growing_headers_400(sqlite_url: str) -> None:
    """Headers that grow past max_header_size while arriving get 400 from h11."""
    body = event_body()
    head = request_head(body, **{"X-Padding": "a" * 8192})
    with (
        serve(sqlite_url, max_header_size="4KiB") as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(head[:3000])
        time.sleep(0.05)
        conn.sendall(head[3000:6000])
        response = read_response(conn)
    assert status_of(response) == 400
    assert count_events(sqlite_url) == 0


def test_headers_under_limit(sqlite_url: str) -> None:
    """Headers just under max_header_size are accepted."""
    body = event_body()
    padding = "a" * 3000
    with (
        serve(sqlite_url, max_header_size="4KiB") as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(request_head(body, **{"X-Padding": padding}) + body)
        response = read_response(conn)
    assert status_of(response) == 200


def test_long_url_414(sqlite_url: str) -> None:
    """A request target over max_url_length gets 414 and is not stored."""
    body = event_body()
    path = URL + "?" + "q" * 400
    with (
        serve(sqlite_url, max_url_length=256) as (port, _daemon),
        connect(port) as conn,
    ):
        conn.sendall(request_head(body, path=path) + body)
        response = read_response(conn)
    assert status_of(response) == 414
    assert b"256-byte limit" in response
    assert count_events(sqlite_url) == 0
