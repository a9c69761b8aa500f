"""An HTTP receiver on loopback that sends scripted responses and records requests.

Tests point an ``http`` sink at it. By default every request gets 200.
Scripted responses (500s, slow responses, 429 with Retry-After) are used
first, either for one ``webhook-id`` or for whichever request comes next.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Response:
    """One scripted response.

    ``delay`` is the wait in seconds before the status line. ``drip`` is the
    wait in seconds before each byte of ``body``.
    """

    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    body: bytes = b""
    drip: float = 0.0


@dataclass
class Received:
    """One request as the server saw it, with monotonic start and end times."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    started: float
    finished: float | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class SinkServer:
    """A threaded HTTP server that records every request and responds by script."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.default = Response()
        # Responses for one path when nothing is scripted, e.g. a sink that is down.
        self.default_by_path: dict[str, Response] = {}
        # Called with each request before the response, in the handler thread.
        self.on_request: Callable[[Received], None] | None = None
        self._next: deque[Response] = deque()
        self._by_id: dict[str, deque[Response]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}"
        self.url = f"{self.base_url}/hooks"

    def start(self) -> SinkServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="sink-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake slow handlers, stop serving and close the listening socket."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def script(self, *responses: Response, webhook_id: str | None = None) -> None:
        """Queue responses for the next requests, or for one webhook-id only."""
        with self._lock:
            if webhook_id is None:
                self._next.extend(responses)
            else:
                self._by_id.setdefault(webhook_id, deque()).extend(responses)

    def fail_next(self, count: int, status: int = 500) -> None:
        self.script(*[Response(status)] * count)

    def counts(self, path: str | None = None) -> Counter[str]:
        """Return the number of requests per webhook-id, failed ones included."""
        with self._lock:
            return Counter(
                r.webhook_id for r in self.received if path in (None, r.path)
            )

    def delivered(self, path: str | None = None) -> list[Received]:
        """Return the requests that got a 2xx response, in arrival order."""
        with self._lock:
            return [
                r
                for r in self.received
                if 200 <= r.status < 300 and path in (None, r.path)
            ]

    def delivered_ids(self, path: str | None = None) -> list[str]:
        return [r.webhook_id for r in self.delivered(path)]

    def _choose(self, path: str, webhook_id: str) -> Response:
        with self._lock:
            queued = self._by_id.get(webhook_id)
            if queued:
                return queued.popleft()
            if self._next:
                return self._next.popleft()
            return self.default_by_path.get(path, self.default)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - name fixed by http.server
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                response = server._choose(self.path, headers.get("webhook-id", ""))
                record = Received(
                    path=self.path,
                    headers=headers,
                    body=body,
                    status=response.status,
                    started=time.monotonic(),
                )
                with server._lock:
                    server.received.append(record)
                if server.on_request is not None:
                    server.on_request(record)
                if response.delay:
                    server._release.wait(response.delay)
                record.finished = time.monotonic()
                self.send_response(response.status)
                if response.retry_after is not None:
                    self.send_header("Retry-After", response.retry_after)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                for index in range(len(response.body)):
                    self.wfile.flush()
                    if server._release.wait(response.drip):
                        return
                    self.wfile.write(response.body[index : index + 1])

            def log_message(self, format: str, *args: object) -> None:
                """Keep request lines out of the test output."""

        return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hung up, e.g. a sink that timed out a slow response."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
