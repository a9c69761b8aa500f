"""The webhook server: ``POST /webhooks/<provider>``, ``/healthz`` and ``/metrics``.

A webhook is answered 2xx only after its events are committed (a duplicate
is answered 2xx too). Statuses: 401 bad signature or stale timestamp, 404
unknown provider, 413 body over the limit, 400 unparseable body, 503 store
unavailable or daemon stopping.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connectors.base import EventRecord, record_problem
from syncd.bodies import read_body
from syncd.errors import (
    PayloadError,
    StoreUnavailableError,
    TimestampError,
    WebhookError,
)
from syncd.runtime import Runtime
from syncd.store import WriteResult
from syncd.writer import BatchWriter

log = logging.getLogger(__name__)


@dataclass
class IntakeState:
    """What the webhook handlers share with the daemon."""

    runtime: Runtime
    writer: BatchWriter
    stopping: bool = False
    in_flight: set[asyncio.Task] = field(default_factory=set)


def create_app(state: IntakeState) -> Starlette:
    """Build the ASGI application of the webhook server."""

    async def webhook(request: Request) -> Response:
        return await receive_webhook(state, request)

    async def healthz(_request: Request) -> Response:
        return await check_health(state)

    async def metrics(_request: Request) -> Response:
        body = state.runtime.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4")

    routes = [
        Route("/webhooks/{provider}", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def receive_webhook(state: IntakeState, request: Request) -> Response:
    """Verify, parse and commit one webhook, then answer."""
    runtime = state.runtime
    name = request.path_params["provider"]
    connector = runtime.connectors.get(name)
    if connector is None or not connector.provider.webhooks_enabled:
        return _unknown_provider(state, name)
    if state.stopping:
        return _error(503, "syncd is stopping; retry later")

    metrics = runtime.metrics
    metrics.webhooks_received.labels(name).inc()
    try:
        body = await read_body(request.headers, request.stream(), _limit(state))
        connector.verify_webhook(request.headers, body, runtime.clock())
        records = connector.parse_webhook(request.headers, body)
        _check_records(records)
    except WebhookError as exc:
        return _reject(state, name, exc)

    if not records:
        return JSONResponse({"status": "ignored", "events": 0})
    try:
        result = await asyncio.wrap_future(
            state.writer.submit(name, "webhook", records)
        )
    except StoreUnavailableError:
        metrics.webhooks_rejected.labels(name, "store_unavailable").inc()
        return _error(503, "the event store is unavailable; retry later")
    return _stored(name, result, state)


def _check_records(records: list[EventRecord]) -> None:
    for record in records:
        problem = record_problem(record)
        if problem is not None:
            raise PayloadError(problem)


def _limit(state: IntakeState) -> int:
    return state.runtime.config.daemon.max_body


def _unknown_provider(state: IntakeState, name: str) -> Response:
    configured = [
        n for n, c in state.runtime.connectors.items() if c.provider.webhooks_enabled
    ]
    log.info("webhook for unknown provider %r rejected", name[:64])
    return _error(
        404,
        f"no provider {name[:64]!r} receives webhooks here; "
        f"configured: {', '.join(sorted(configured)) or 'none'}",
    )


def _reject(state: IntakeState, name: str, exc: WebhookError) -> Response:
    reason = {
        401: "timestamp" if isinstance(exc, TimestampError) else "signature",
        413: "too_large",
        415: "encoding",
    }.get(exc.status, "payload")
    state.runtime.metrics.webhooks_rejected.labels(name, reason).inc()
    if isinstance(exc, TimestampError):
        log.warning("webhook for %s rejected: %s", name, exc)
    else:
        log.info("webhook for %s rejected (%d): %s", name, exc.status, exc)
    return _error(exc.status, str(exc))


def _stored(name: str, result: WriteResult, state: IntakeState) -> Response:
    if result.duplicates:
        state.runtime.metrics.webhooks_duplicate.labels(name).inc(
            len(result.duplicates)
        )
    status = "stored" if result.new else "duplicate"
    return JSONResponse(
        {"status": status, "events": len(result.new) + len(result.duplicates)}
    )


async def check_health(state: IntakeState) -> Response:
    """Answer 200 when the store takes a query, else 503."""
    if state.stopping:
        return _error(503, "stopping")
    try:
        await run_in_threadpool(state.runtime.store.ping)
    except StoreUnavailableError as exc:
        return _error(503, f"store unavailable: {exc}")
    return JSONResponse({"status": "ok"})
