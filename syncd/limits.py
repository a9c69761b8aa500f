"""Connection limits of the webhook server: slow clients, long URLs, concurrency.

uvicorn (0.55, h11) enforces ``max_connections`` through
``limit_concurrency`` (503 beyond it) and ``max_header_size`` on a request
line plus headers that is still arriving (400 beyond it);
:class:`RequestLimits` checks a complete one (431) and the URL length (414).
uvicorn has no timeout for a request that arrives slowly, so
:class:`TimedH11Protocol` closes a connection whose request line and headers
take longer than ``read_timeout``, and :func:`syncd.bodies.read_body` raises
an error that becomes a 408 response for a body that does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from syncd.config import DaemonConfig

log = logging.getLogger(__name__)


class RequestLimits:
    """ASGI middleware that rejects an oversized request target or header block.

    A request target (path and query) over ``max_url`` bytes gets 414, and
    headers over ``max_headers`` bytes in total get 431. h11 only applies its
    own limit while a header block is incomplete, so a block that arrives in
    one read is checked here.
    """

    def __init__(self, app: ASGIApp, max_url: int, max_headers: int) -> None:
        self.app = app
        self.max_url = max_url
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope["path"].encode()
            length = len(raw_path) + len(scope.get("query_string", b""))
            if length > self.max_url:
                message = f"URL of {length} bytes is over the {self.max_url}-byte limit"
                await _send_error(send, 414, message)
                return
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])
            if size > self.max_headers:
                message = (
                    f"headers of {size} bytes are over the {self.max_headers}-byte "
                    "limit"
                )
                await _send_error(send, 431, message)
                return
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, message: str) -> None:
    log.info("request rejected with %d: %s", status, message)
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request's line and headers.

    The deadline starts when the connection opens or the first byte of a
    request arrives, and ends when h11 has read the whole header block. A
    client that misses it gets its connection closed, so a client that sends
    headers a byte at a time cannot hold a connection open.

    NOTE: this uses attributes of uvicorn's H11Protocol (``conn``, ``loop``,
    ``transport``, ``timeout_keep_alive_task``) as of uvicorn 0.55, which are
    not a public API. tests/test_limits.py runs it on a real server.
    """

    header_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm_header_deadline()
        elif self.conn.their_state is not h11.IDLE:
            self._clear_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.header_timeout, self._headers_timed_out
            )

    def _clear_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_timed_out(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:
            log.info(
                "closing a connection whose request headers took over %.0fs",
                self.header_timeout,
            )
        # An idle keep-alive connection is closed by uvicorn's own
        # timeout_keep_alive; this closes one that never sent a full request.
        if self.timeout_keep_alive_task is None:
            self.transport.close()


def protocol_for(daemon: DaemonConfig) -> type[TimedH11Protocol]:
    """Return a protocol class whose header deadline is ``daemon.read_timeout``."""
    seconds = daemon.read_timeout.total_seconds()
    return type("SyncdH11Protocol", (TimedH11Protocol,), {"header_timeout": seconds})


def uvicorn_options(daemon: DaemonConfig) -> dict[str, Any]:
    """Return the uvicorn.Config keyword arguments that enforce ``[daemon]`` limits."""
    return {
        "http": protocol_for(daemon),
        "limit_concurrency": daemon.max_connections,
        "h11_max_incomplete_event_size": daemon.max_header_size,
    }
