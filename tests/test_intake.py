"""Tests of the webhook server with a real BatchWriter on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import logging
import socket
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from starlette.types import ASGIApp

import syncd.writer
from connectors.stripe import StripeConnector
from syncd import config
from syncd.intake import IntakeState, create_app, webhook_provider
from syncd.models import Event, SourceStats
from syncd.runtime import Runtime
from syncd.store import Store, WriteResult, make_engine
from syncd.writer import BatchWriter

T0 = 1714557600  # 2024-05-01T10:00:00Z
SECRET = "whsec_intake_test_5f2c81"
OTHER_SECRET = "whsec_someone_else"
MAX_BODY = 64 * 1024
LOOPBACK = "http://127.0.0.1"
LOOPBACK_API = "http://127.0.0.1:9"
WEBHOOK_URL = "/webhooks/payments"
# Bounds waits on other threads so that a broken writer fails a test instead
# of hanging it. A passing run never waits this long.
THREAD_TIMEOUT = 30.0


class FakeClock:
    """Clock injected into the runtime and the writer, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def as_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


class GatedWriter(BatchWriter):
    """A writer that reports when ``expected`` requests have been queued."""

    def __init__(self, store: Store, expected: int, **kwargs: Any) -> None:
        super().__init__(store, **kwargs)
        self.expected = expected
        self.queued = 0
        self.all_queued = threading.Event()
        self._count_lock = threading.Lock()

    def _enqueue(self, item: Any) -> None:
        super()._enqueue(item)
        with self._count_lock:
            self.queued += 1
            if self.queued >= self.expected:
                self.all_queued.set()


class AppClient:
    """A blocking HTTP client that sends each request into the ASGI app in-process.

    Each request runs in a fresh event loop of the calling thread, so several
    threads can send requests at the same time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url=LOOPBACK
            ) as client:
                request = client.request(method, path, **kwargs)
                return await asyncio.wait_for(request, THREAD_TIMEOUT)

        return asyncio.run(send())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)


@dataclass
class Intake:
    """One webhook server: its app, test client, writer and injected clock."""

    app: ASGIApp
    client: AppClient
    state: IntakeState
    writer: BatchWriter
    clock: FakeClock
    started: bool = False

    def start_writer(self) -> None:
        self.writer.start()
        self.started = True


def make_config(database_url: str, max_body: int) -> config.Config:
    return config.parse(
        {
            "daemon": {"database": database_url, "max_body": max_body},
            "providers": {
                "payments": {
                    "connector": "stripe",
                    "api_base_url": LOOPBACK_API,
                    "webhook_secret": SECRET,
                    "signature_tolerance": "5m",
                },
                "polled": {"connector": "stripe", "api_base_url": LOOPBACK_API},
            },
        }
    )


@contextmanager
def open_intake(
    store: Store,
    clock: FakeClock,
    *,
    max_body: int = MAX_BODY,
    start: bool = True,
    writer: BatchWriter | None = None,
) -> Iterator[Intake]:
    settings = make_config(store.url, max_body)
    connectors = {
        name: StripeConnector(provider) for name, provider in settings.providers.items()
    }
    runtime = Runtime(config=settings, store=store, connectors=connectors, clock=clock)
    writer = writer or BatchWriter(store, clock=clock.as_datetime)
    state = IntakeState(runtime=runtime, writer=writer)
    app = create_app(state)
    intake = Intake(app, AppClient(app), state, writer, clock)
    if start:
        intake.start_writer()
    try:
        yield intake
    finally:
        if intake.started:
            writer.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 10)


@pytest.fixture
def intake(store: Store, clock: FakeClock) -> Iterator[Intake]:
    with open_intake(store, clock) as opened:
        yield opened


def event_body(
    event_id: str = "evt_3", kind: str = "invoice.paid", **extra: Any
) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": T0,
        "data": {"object": {"id": "in_1", "object": "invoice", "note": "Zoë"}},
        **extra,
    }
    return json.dumps(event, ensure_ascii=False, indent=2).encode() + b"\n"


def signature(body: bytes, timestamp: int = T0, secret: str = SECRET) -> str:
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signed_headers(body: bytes, **extra: str) -> dict[str, str]:
    return {
        "Stripe-Signature": signature(body),
        "Content-Type": "application/json",
        **extra,
    }


def post(
    client: AppClient,
    body: bytes,
    headers: dict[str, str] | None = None,
    path: str = WEBHOOK_URL,
) -> httpx.Response:
    if headers is None:
        headers = signed_headers(body)
    return client.post(path, content=body, headers=headers)


async def post_async(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(WEBHOOK_URL, content=body, headers=signed_headers(body))


def read_log(url: str) -> list[Event]:
    """Read the log through a second Store, so only committed rows are seen."""
    reader = Store(url, create=False)
    try:
        with reader.session() as session:
            return list(session.scalars(select(Event).order_by(Event.offset)))
    finally:
        reader.dispose()


def read_stats(url: str) -> SourceStats | None:
    reader = Store(url, create=False)
    try:
        with reader.session() as session:
            return session.get(SourceStats, ("payments", "webhook"))
    finally:
        reader.dispose()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def break_store(store: Store) -> None:
    """Point the store at a loopback port where no database listens."""
    store.engine.dispose()
    store.engine = make_engine(f"postgresql://syncd@127.0.0.1:{closed_port()}/syncd")


def run_async(
    app: ASGIApp, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]
) -> Any:
    """Run ``scenario`` with an httpx client that streams bodies into ``app``."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as client:
            return await asyncio.wait_for(scenario(client), THREAD_TIMEOUT)

    return asyncio.run(main())


def gzip_bomb(inflated_size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated_size // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


# Accepted webhooks


def test_webhook_stored_and_committed(intake: Intake, store: Store) -> None:
    """A valid webhook gets 200 and is committed when the response arrives."""
    body = event_body()
    assert read_log(store.url) == []

    response = post(intake.client, body)

    assert response.status_code == 200
    assert response.json() == {"status": "stored", "events": 1}
    rows = read_log(store.url)
    assert len(rows) == 1
    row = rows[0]
    assert row.provider == "payments"
    assert row.key == "evt_3"
    assert row.type == "invoice.paid"
    assert row.first_source == "webhook"
    assert row.occurred_at == datetime.fromtimestamp(T0, UTC)
    assert row.first_seen_at == intake.clock.as_datetime()
    assert row.webhook_seen_at == intake.clock.as_datetime()
    assert row.poll_seen_at is None
    assert row.duplicates == 0


def test_webhook_trailing_slash_stored(intake: Intake, store: Store) -> None:
    """A webhook URL ending in '/' is served, not redirected."""
    response = post(intake.client, event_body(), path=WEBHOOK_URL + "/")

    assert response.status_code == 200
    assert response.json() == {"status": "stored", "events": 1}
    assert len(read_log(store.url)) == 1


@pytest.mark.parametrize(
    ("path", "provider"),
    [
        ("/webhooks/payments", "payments"),
        ("/webhooks/payments/", "payments"),
        ("/webhooks/", None),
        ("/webhooks//", None),
        ("/webhooks/payments/extra", None),
        ("/webhookspayments", None),
        ("/healthz", None),
    ],
)
def test_webhook_path_provider(path: str, provider: str | None) -> None:
    assert webhook_provider(path) == provider


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_webhook_other_method_405(intake: Intake, store: Store, method: str) -> None:
    """Only POST reaches the webhook handler; other methods get 405."""
    body = event_body()
    response = intake.client.request(
        method, WEBHOOK_URL, content=body, headers=signed_headers(body)
    )

    assert response.status_code == 405
    assert read_log(store.url) == []


def test_webhook_nested_path_404(intake: Intake, store: Store) -> None:
    body = event_body()
    response = post(intake.client, body, path=WEBHOOK_URL + "/extra")

    assert response.status_code == 404
    assert read_log(store.url) == []


def test_webhook_payload_exact(intake: Intake, store: Store) -> None:
    """The stored payload is the received text, with 'ë' kept as 'ë'."""
    body = event_body()
    assert post(intake.client, body).status_code == 200
    payload = read_log(store.url)[0].payload
    assert payload == body.decode("utf-8")
    assert "Zoë" in payload


def test_webhook_bom_stored_as_json(intake: Intake, store: Store) -> None:
    """A body with a UTF-8 byte order mark is verified as sent, stored without it."""
    body = b"\xef\xbb\xbf" + event_body()
    assert post(intake.client, body).status_code == 200
    payload = read_log(store.url)[0].payload
    assert json.loads(payload)["id"] == "evt_3"


def test_webhook_response_waits_commit(store: Store, clock: FakeClock) -> None:
    """The 200 is sent only after the writer has committed the event."""
    order: list[str] = []

    def record_commit(_provider: str, _source: str, _result: WriteResult) -> None:
        order.append("commit")

    writer = GatedWriter(
        store, expected=1, clock=clock.as_datetime, on_commit=record_commit
    )
    with open_intake(store, clock, start=False, writer=writer) as intake:

        async def scenario(client: httpx.AsyncClient) -> tuple[int, bool]:
            body = event_body()
            task = asyncio.create_task(post_async(client, body))
            while not writer.all_queued.is_set() and not task.done():
                await asyncio.sleep(0)
            for _ in range(50):
                await asyncio.sleep(0)
            responded_early = task.done()
            intake.start_writer()
            response = await task
            order.append("response")
            return response.status_code, responded_early

        status, responded_early = run_async(intake.app, scenario)

    assert responded_early is False
    assert status == 200
    assert order == ["commit", "response"]


def test_webhook_gzip_stored_inflated(intake: Intake, store: Store) -> None:
    """A gzip body signed over its JSON is accepted and stored as that JSON."""
    body = event_body()
    headers = signed_headers(body, **{"Content-Encoding": "gzip"})

    response = post(intake.client, gzip.compress(body), headers)

    assert response.status_code == 200
    assert read_log(store.url)[0].payload == body.decode("utf-8")


def test_webhook_deflate_stored_inflated(intake: Intake, store: Store) -> None:
    """A deflate body signed over its JSON is accepted and stored as that JSON."""
    body = event_body()
    headers = signed_headers(body, **{"Content-Encoding": "deflate"})

    response = post(intake.client, zlib.compress(body), headers)

    assert response.status_code == 200
    assert read_log(store.url)[0].payload == body.decode("utf-8")


def test_webhook_near_limit_exact(intake: Intake, store: Store) -> None:
    """A body just under max_body is accepted and stored byte-exact."""
    filler = "x" * (MAX_BODY - len(event_body()) - 200)
    body = event_body(filler=filler)
    assert MAX_BODY - 200 < len(body) <= MAX_BODY

    response = post(intake.client, body)

    assert response.status_code == 200
    stored = read_log(store.url)[0].payload.encode("utf-8")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(body).digest()


def test_webhook_chunked_accepted(intake: Intake, store: Store) -> None:
    """A body streamed in chunks without Content-Length is stored whole."""
    body = event_body(filler="y" * 20_000)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000]

        return await client.post(
            WEBHOOK_URL, content=chunks(), headers=signed_headers(body)
        )

    response = run_async(intake.app, scenario)

    assert "content-length" not in response.request.headers
    assert response.status_code == 200
    assert read_log(store.url)[0].payload == body.decode("utf-8")


# Duplicates


def test_duplicate_40s_apart(intake: Intake, store: Store) -> None:
    """The same event 40 s later gets 200 and is counted, not stored."""
    body = event_body()
    first = post(intake.client, body)
    intake.clock.advance(40)
    second = post(intake.client, body)

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate", "events": 1}
    rows = read_log(store.url)
    assert len(rows) == 1
    assert rows[0].duplicates == 1
    assert rows[0].first_seen_at == datetime.fromtimestamp(T0 + 10, UTC)


def test_duplicate_counted_in_stats(intake: Intake, store: Store) -> None:
    """Two deliveries of one event count two arrivals and one duplicate."""
    body = event_body()
    post(intake.client, body)
    post(intake.client, body)

    stats = read_stats(store.url)
    assert stats is not None
    assert stats.received == 2
    assert stats.duplicates == 1
    metrics = intake.client.get("/metrics").text
    assert 'syncd_webhooks_duplicate_total{provider="payments"} 1.0' in metrics


def test_duplicate_concurrent_threads(intake: Intake, store: Store) -> None:
    """The same event on two threads at once gives one entry and two 200s."""
    body = event_body()
    barrier = threading.Barrier(2)

    def deliver() -> httpx.Response:
        barrier.wait(THREAD_TIMEOUT)
        return post(intake.client, body)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(deliver) for _ in range(2)]
        responses = [future.result(THREAD_TIMEOUT) for future in futures]

    assert [r.status_code for r in responses] == [200, 200]
    rows = read_log(store.url)
    assert len(rows) == 1
    assert rows[0].duplicates == 1


def test_duplicate_same_batch(store: Store, clock: FakeClock) -> None:
    """Two deliveries committed in one writer batch give one entry."""
    writer = GatedWriter(store, expected=2, clock=clock.as_datetime)
    body = event_body()
    with (
        open_intake(store, clock, start=False, writer=writer) as intake,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        futures = [pool.submit(post, intake.client, body) for _ in range(2)]
        all_queued = writer.all_queued.wait(THREAD_TIMEOUT)
        intake.start_writer()
        responses = [future.result(THREAD_TIMEOUT) for future in futures]

    assert all_queued is True
    assert [r.status_code for r in responses] == [200, 200]
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["duplicate", "stored"]
    rows = read_log(store.url)
    assert len(rows) == 1
    assert rows[0].duplicates == 1


def test_duplicate_two_daemons(store: Store, clock: FakeClock) -> None:
    """Two servers on one database receiving one event at once store it once."""
    second_store = Store(store.url)
    body = event_body()
    barrier = threading.Barrier(2)
    try:
        with (
            open_intake(store, clock) as first,
            open_intake(second_store, clock) as second,
        ):

            def deliver(intake: Intake) -> httpx.Response:
                barrier.wait(THREAD_TIMEOUT)
                return post(intake.client, body)

            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(deliver, i) for i in (first, second)]
                responses = [future.result(THREAD_TIMEOUT) for future in futures]
    finally:
        second_store.dispose()

    assert [r.status_code for r in responses] == [200, 200]
    rows = read_log(store.url)
    assert len(rows) == 1
    assert rows[0].duplicates == 1


def test_duplicate_after_restart(store: Store, clock: FakeClock) -> None:
    """The same event after a restart on the same database is not stored again."""
    body = event_body()
    with open_intake(store, clock) as before:
        first = post(before.client, body)
    store.dispose()

    reopened = Store(store.url)
    try:
        with open_intake(reopened, clock) as after:
            second = post(after.client, body)
    finally:
        reopened.dispose()

    assert first.status_code == 200
    assert second.status_code == 200
    assert second.json()["status"] == "duplicate"
    rows = read_log(store.url)
    assert len(rows) == 1
    assert rows[0].duplicates == 1


# Rejected webhooks


@dataclass(frozen=True)
class Rejection:
    """One rejected request: what is sent and the expected response."""

    name: str
    body: bytes
    headers: dict[str, str]
    status: int
    message: str
    reason: str | None
    path: str = WEBHOOK_URL


def _rejections() -> list[Rejection]:
    body = event_body("evt_rejected")
    oversized = event_body("evt_big", filler="z" * MAX_BODY)
    not_json = b"this is not JSON"
    array = json.dumps([json.loads(body)]).encode()
    no_type = json.dumps({"id": "evt_9", "object": "event", "created": T0}).encode()
    compressed = gzip.compress(body)
    bomb = gzip_bomb(32 * 1024 * 1024)
    return [
        Rejection(
            "missing_signature",
            body,
            {"Content-Type": "application/json"},
            401,
            "missing Stripe-Signature",
            "signature",
        ),
        Rejection(
            "wrong_secret",
            body,
            {"Stripe-Signature": signature(body, secret=OTHER_SECRET)},
            401,
            "no v1 signature",
            "signature",
        ),
        Rejection(
            "changed_body",
            body.replace(b"Zo", b"Jo"),
            signed_headers(body),
            401,
            "no v1 signature",
            "signature",
        ),
        Rejection(
            "stale_timestamp",
            body,
            {"Stripe-Signature": signature(body, timestamp=T0 - 400)},
            401,
            "tolerance",
            "timestamp",
        ),
        Rejection(
            "future_timestamp",
            body,
            {"Stripe-Signature": signature(body, timestamp=T0 + 400)},
            401,
            "tolerance",
            "timestamp",
        ),
        Rejection(
            "unknown_provider",
            body,
            signed_headers(body),
            404,
            "no provider",
            None,
            "/webhooks/nowhere",
        ),
        Rejection(
            "webhooks_off",
            body,
            signed_headers(body),
            404,
            "no provider",
            None,
            "/webhooks/polled",
        ),
        Rejection(
            "over_max_body",
            oversized,
            signed_headers(oversized),
            413,
            "limit",
            "too_large",
        ),
        Rejection(
            "not_json",
            not_json,
            signed_headers(not_json),
            400,
            "not valid JSON",
            "payload",
        ),
        Rejection(
            "json_array",
            array,
            signed_headers(array),
            400,
            "event object",
            "payload",
        ),
        Rejection(
            "missing_type",
            no_type,
            signed_headers(no_type),
            400,
            "'type'",
            "payload",
        ),
        Rejection(
            "unsupported_encoding",
            compressed,
            signed_headers(body, **{"Content-Encoding": "br"}),
            415,
            "Content-Encoding",
            None,
        ),
        Rejection(
            "gzip_bomb",
            bomb,
            signed_headers(body, **{"Content-Encoding": "gzip"}),
            413,
            "limit",
            "too_large",
        ),
        Rejection(
            "truncated_gzip",
            compressed[:-12],
            signed_headers(body, **{"Content-Encoding": "gzip"}),
            400,
            "truncated",
            "payload",
        ),
        Rejection(
            "corrupt_gzip",
            b"\x1f\x8b" + b"\xff" * 40,
            signed_headers(body, **{"Content-Encoding": "gzip"}),
            400,
            "decompressed",
            "payload",
        ),
    ]


REJECTIONS = _rejections()


@pytest.mark.parametrize("case", REJECTIONS, ids=lambda case: case.name)
def test_rejection_status(intake: Intake, store: Store, case: Rejection) -> None:
    """Each bad request gets its status and message and leaves the log as it was."""
    assert post(intake.client, event_body("evt_seed")).status_code == 200
    before = [row.key for row in read_log(store.url)]

    response = post(intake.client, case.body, case.headers, case.path)

    assert response.status_code == case.status
    assert case.message in response.json()["error"]
    assert [row.key for row in read_log(store.url)] == before


@pytest.mark.parametrize(
    "case", [c for c in REJECTIONS if c.reason], ids=lambda case: case.name
)
def test_rejection_metric(intake: Intake, case: Rejection) -> None:
    """Each rejection is counted under its reason label."""
    post(intake.client, case.body, case.headers, case.path)

    metrics = intake.client.get("/metrics").text
    line = (
        "syncd_webhooks_rejected_total"
        f'{{provider="payments",reason="{case.reason}"}} 1.0'
    )
    assert line in metrics


def test_rejection_stale_message(intake: Intake) -> None:
    """A stale timestamp is reported as outside the tolerance, not a bad signature."""
    body = event_body()
    headers = {"Stripe-Signature": signature(body, timestamp=T0 - 301)}

    response = post(intake.client, body, headers)

    assert response.status_code == 401
    assert "outside the 300s tolerance" in response.json()["error"]


def test_rejection_implausible_timestamp(intake: Intake) -> None:
    """An absurd signed timestamp gets 401 and a message calling it implausible."""
    body = event_body()
    headers = {"Stripe-Signature": signature(body, timestamp=10**30)}

    response = post(intake.client, body, headers)

    assert response.status_code == 401
    error = response.json()["error"]
    assert "is not a plausible Unix time in seconds" in error
    assert str(10**30) not in error
    assert SECRET not in error


def test_chunked_over_limit_stops(intake: Intake, store: Store) -> None:
    """A chunked body over max_body gets 413 before the rest is read."""
    total_chunks = 64
    consumed = 0

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            nonlocal consumed
            for _ in range(total_chunks):
                consumed += 1
                yield b" " * 4096

        return await client.post(
            WEBHOOK_URL, content=chunks(), headers=signed_headers(b"")
        )

    response = run_async(intake.app, scenario)

    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert consumed < total_chunks
    assert read_log(store.url) == []


def test_declared_over_limit_reads_nothing(intake: Intake, store: Store) -> None:
    """A Content-Length over max_body gets 413 before any body chunk is read."""
    consumed = 0

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            nonlocal consumed
            for _ in range(20):
                consumed += 1
                yield b" " * 4096

        headers = signed_headers(b"", **{"Content-Length": str(20 * 4096)})
        return await client.post(WEBHOOK_URL, content=chunks(), headers=headers)

    response = run_async(intake.app, scenario)

    assert response.status_code == 413
    assert consumed == 0
    assert read_log(store.url) == []


def test_gzip_bomb_bounded_memory(intake: Intake, store: Store) -> None:
    """A gzip bomb inflating to 32 MiB is rejected without inflating it whole."""
    bomb = gzip_bomb(32 * 1024 * 1024)
    assert len(bomb) < MAX_BODY
    headers = signed_headers(b"{}", **{"Content-Encoding": "gzip"})

    tracemalloc.start()
    try:
        response = post(intake.client, bomb, headers)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert response.status_code == 413
    assert peak < 8 * 1024 * 1024
    assert read_log(store.url) == []


def test_stopping_returns_503(intake: Intake, store: Store) -> None:
    """A webhook that arrives while the daemon stops gets 503 and is not stored."""
    intake.state.stopping = True

    response = post(intake.client, event_body())

    assert response.status_code == 503
    assert read_log(store.url) == []


# Store failures


def test_store_down_returns_503(intake: Intake, store: Store) -> None:
    """A webhook gets 503, never 2xx, while the database is unreachable."""
    break_store(store)

    response = post(intake.client, event_body())

    assert response.status_code == 503
    assert "retry" in response.json()["error"]
    assert read_log(store.url) == []


def test_store_down_metric(intake: Intake, store: Store) -> None:
    """A webhook refused for an unreachable store is counted as such."""
    break_store(store)
    post(intake.client, event_body())

    metrics = intake.client.get("/metrics").text
    line = (
        "syncd_webhooks_rejected_total"
        '{provider="payments",reason="store_unavailable"} 1.0'
    )
    assert line in metrics


def test_store_back_accepts_retry(intake: Intake, store: Store) -> None:
    """The provider's retry after an outage is stored once the database is back."""
    body = event_body()
    good_engine = store.engine
    break_store(store)
    assert post(intake.client, body).status_code == 503

    store.engine.dispose()
    store.engine = good_engine
    response = post(intake.client, body)

    assert response.status_code == 200
    assert response.json()["status"] == "stored"
    assert [row.key for row in read_log(store.url)] == ["evt_3"]


def test_failed_commit_rolls_back(
    intake: Intake, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that fails after inserting rows gets 503 and leaves no row."""
    real_record_events = syncd.writer.record_events

    def insert_then_fail(*args: Any, **kwargs: Any) -> WriteResult:
        real_record_events(*args, **kwargs)
        raise RuntimeError("simulated failure after the insert")

    monkeypatch.setattr(syncd.writer, "record_events", insert_then_fail)

    response = post(intake.client, event_body())

    assert response.status_code == 503
    assert read_log(store.url) == []


def test_on_commit_failure_responds(store: Store, clock: FakeClock) -> None:
    """A failing on_commit hook neither withholds the 200 nor stops the writer."""

    def fail(_provider: str, _source: str, _result: WriteResult) -> None:
        raise RuntimeError("simulated hook failure")

    writer = BatchWriter(store, clock=clock.as_datetime, on_commit=fail)
    with open_intake(store, clock, writer=writer) as intake:

        async def scenario(client: httpx.AsyncClient) -> list[int]:
            first = await post_async(client, event_body("evt_1"))
            second = await post_async(client, event_body("evt_2"))
            return [first.status_code, second.status_code]

        statuses = run_async(intake.app, scenario)

    assert statuses == [200, 200]
    assert [row.key for row in read_log(store.url)] == ["evt_1", "evt_2"]


# Health and metrics


def test_healthz_ok(intake: Intake) -> None:
    """GET /healthz returns 200 while the store takes queries."""
    response = intake.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_store_down(intake: Intake, store: Store) -> None:
    """GET /healthz returns 503 while the database is unreachable."""
    break_store(store)
    response = intake.client.get("/healthz")
    assert response.status_code == 503


def test_healthz_stopping(intake: Intake) -> None:
    """GET /healthz returns 503 while the daemon stops."""
    intake.state.stopping = True
    response = intake.client.get("/healthz")
    assert response.status_code == 503


def test_metrics_counts(intake: Intake) -> None:
    """GET /metrics counts received webhooks and rejections by reason."""
    body = event_body()
    post(intake.client, body)
    post(intake.client, body, {"Stripe-Signature": signature(body, secret="x")})
    post(intake.client, body, {"Stripe-Signature": signature(body, T0 - 400)})

    response = intake.client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'syncd_webhooks_received_total{provider="payments"} 3.0' in text
    signature_line = (
        'syncd_webhooks_rejected_total{provider="payments",reason="signature"} 1.0'
    )
    assert signature_line in text
    timestamp_line = (
        'syncd_webhooks_rejected_total{provider="payments",reason="timestamp"} 1.0'
    )
    assert timestamp_line in text


# Secrets


def test_secret_never_in_responses(
    intake: Intake, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """No response body or log record contains the webhook secret."""
    caplog.set_level(logging.DEBUG)
    body = event_body()
    responses = [post(intake.client, body), post(intake.client, body)]
    for case in REJECTIONS:
        responses.append(post(intake.client, case.body, case.headers, case.path))
    responses.append(intake.client.get("/healthz"))
    responses.append(intake.client.get("/metrics"))
    break_store(store)
    responses.append(post(intake.client, event_body("evt_down")))
    responses.append(intake.client.get("/healthz"))

    for response in responses:
        assert SECRET not in response.text
    for record in caplog.records:
        assert SECRET not in record.getMessage()
