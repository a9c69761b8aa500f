"""Simulated GitHub on loopback: changing issues and pull requests, listings, webhooks.

`SimulatedGitHub` keeps one repository's issues and pull requests in memory.
Each change stamps the item with the injected clock's second, like GitHub's
one-second ``updated_at``, and records the webhook GitHub would send. The
listings behave like GitHub's: ``state``, ``sort=updated``, ``direction``,
``since`` (issues only, compared with ``>=``), ``per_page`` and ``page``,
with a ``Link`` header whose ``rel="next"`` URL uses the
``/repositories/<id>/…`` form. A pull request appears in ``/issues`` with a
``pull_request`` member and its issue view's ``updated_at``, and in
``/pulls`` with its own id and ``updated_at``. A push moves only the latter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REPOSITORY_ID = 1296269
API_VERSION = "2022-11-28"
SERVE_TIMEOUT = 5.0  # seconds that serve() waits for uvicorn to listen


@dataclass
class Delivery:
    """One webhook GitHub would send, with the version it carries."""

    event: str
    action: str
    delivery_id: str
    body: bytes
    resource: str
    version: str


@dataclass
class DeliveryStats:
    """What one deliver() call did; ``failed`` counts non-2xx responses."""

    delivered: list[Delivery] = field(default_factory=list)
    dropped: list[Delivery] = field(default_factory=list)
    failed: int = 0


@dataclass
class _Item:
    """One issue, or one pull request when ``pull_id`` is set."""

    number: int
    issue_id: int
    title: str
    created_at: int
    updated_at: int
    state: str = "open"
    closed_at: int | None = None
    labels: list[str] = field(default_factory=list)
    pull_id: int | None = None
    pull_updated_at: int | None = None
    merged_at: int | None = None


def iso(seconds: int | None) -> str | None:
    """Format Unix seconds the way GitHub's REST API writes times."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SimulatedGitHub:
    """A GitHub-like repository API and webhook sender, deterministic for a seed."""

    def __init__(
        self,
        *,
        repository: str,
        token: str,
        webhook_secret: str,
        clock: Callable[[], float],
        seed: int = 0,
    ) -> None:
        self.repository = repository
        self._token = token
        self._secret = webhook_secret
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._items: dict[int, _Item] = {}
        self.deliveries: list[Delivery] = []
        self.requests: list[httpx.QueryParams] = []
        # Called after each listing page is built, before it is sent, with the
        # listing kind, the page number and the rows; it may change items.
        self.after_page: Callable[[str, int, list[dict[str, Any]]], None] | None = None
        self.base_url = "http://127.0.0.1"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        routes = [
            Route("/repos/{owner}/{name}/{kind}", self._list, methods=["GET"]),
            Route("/repositories/{id:int}/{kind}", self._list, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes)

    # Changes

    def open_issue(self) -> int:
        """Open an issue now and return its number."""
        with self._lock:
            item = self._new_item()
            self._record_issue("opened", item)
        return item.number

    def change_issue(self, number: int, action: str) -> None:
        """Apply ``edited``, ``labeled``, ``closed`` or ``reopened`` to an issue."""
        with self._lock:
            item = self._touch(number)
            if action == "closed":
                item.state, item.closed_at = "closed", item.updated_at
            elif action == "reopened":
                item.state, item.closed_at = "open", None
            elif action == "labeled":
                item.labels.append(f"label-{len(item.labels) + 1}")
            else:
                item.title += " (edited)"
            self._record_issue(action, item)

    def open_pull(self) -> int:
        """Open a pull request now and return its number."""
        with self._lock:
            item = self._new_item()
            item.pull_id = 9_000_000 + item.number
            item.pull_updated_at = item.updated_at
            self._record_pull("opened", item)
        return item.number

    def push_to_pull(self, number: int) -> None:
        """Push to a pull request: only the pull view's ``updated_at`` moves."""
        with self._lock:
            item = self._items[number]
            now = self._now()
            self._check_new_second(item.pull_updated_at, now, number)
            item.pull_updated_at = now
            self._record_pull("synchronize", item)

    def merge_pull(self, number: int) -> None:
        """Merge a pull request, which moves both views' ``updated_at``."""
        with self._lock:
            item = self._touch(number)
            item.state, item.closed_at, item.merged_at = (
                "closed",
                item.updated_at,
                item.updated_at,
            )
            item.pull_updated_at = item.updated_at
            self._record_pull("closed", item)

    def random_change(self) -> None:
        """Apply one change chosen by the seeded generator."""
        open_items = [n for n, i in self._items.items() if i.state == "open"]
        pulls = [n for n in open_items if self._items[n].pull_id is not None]
        issues = [n for n, i in self._items.items() if i.pull_id is None]
        choice = self._rng.random()
        if choice < 0.1 or not issues:
            self.open_issue()
        elif choice < 0.2 and pulls:
            self._rng.choice([self.push_to_pull, self.merge_pull])(
                self._rng.choice(pulls)
            )
        else:
            number = self._rng.choice(issues)
            closed = self._items[number].state == "closed"
            actions = ["reopened"] if closed else ["edited", "labeled", "closed"]
            self.change_issue(number, self._rng.choice(actions))

    def current_versions(self) -> set[tuple[str, str]]:
        """Return (resource, version) of every item as the listings show it now."""
        with self._lock:
            return {self._version(item) for item in self._items.values()}

    def _version(self, item: _Item) -> tuple[str, str]:
        name = self.repository.lower()
        if item.pull_id is None:
            return f"issue:{name}#{item.number}", str(iso(item.updated_at))
        return f"pull:{name}#{item.number}", str(iso(item.pull_updated_at))

    def _now(self) -> int:
        return int(self._clock())

    def _new_item(self) -> _Item:
        number = len(self._items) + 1
        now = self._now()
        item = _Item(number, 5_000_000 + number, f"Item {number}", now, now)
        self._items[number] = item
        return item

    def _touch(self, number: int) -> _Item:
        item = self._items[number]
        now = self._now()
        self._check_new_second(item.updated_at, now, number)
        item.updated_at = now
        return item

    @staticmethod
    def _check_new_second(previous: int | None, now: int, number: int) -> None:
        if previous is not None and now <= previous:
            raise ValueError(
                f"item {number} changed twice in second {now}; advance the clock "
                "first, since GitHub's updated_at has one-second resolution"
            )

    # Webhooks

    def _record_issue(self, action: str, item: _Item) -> None:
        payload = {"action": action, "issue": self._issue_json(item)}
        self._record("issues", action, payload, item)

    def _record_pull(self, action: str, item: _Item) -> None:
        payload = {
            "action": action,
            "number": item.number,
            "pull_request": self._pull_json(item),
        }
        self._record("pull_request", action, payload, item)

    def _record(
        self, event: str, action: str, payload: dict[str, Any], item: _Item
    ) -> None:
        payload["repository"] = {"id": REPOSITORY_ID, "full_name": self.repository}
        payload["sender"] = {"login": "octocat", "id": 1}
        body = (json.dumps(payload, indent=2) + "\n").encode()
        delivery_id = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        resource, version = self._version(item)
        self.deliveries.append(
            Delivery(event, action, delivery_id, body, resource, version)
        )

    def sign(self, body: bytes) -> str:
        """Return the X-Hub-Signature-256 value for ``body``."""
        digest = hmac.new(self._secret.encode(), body, hashlib.sha256).hexdigest()
        return f"sha256={digest}"

    def deliver(self, url: str, *, drop_rate: float) -> DeliveryStats:
        """POST every recorded webhook in order, dropping each with ``drop_rate``."""
        stats = DeliveryStats()
        with httpx.Client(timeout=10.0, trust_env=False) as client:
            for delivery in self.deliveries:
                if self._rng.random() < drop_rate:
                    stats.dropped.append(delivery)
                    continue
                response = client.post(
                    url,
                    content=delivery.body,
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": "GitHub-Hookshot/simulated",
                        "X-GitHub-Event": delivery.event,
                        "X-GitHub-Delivery": delivery.delivery_id,
                        "X-Hub-Signature-256": self.sign(delivery.body),
                    },
                )
                if response.is_success:
                    stats.delivered.append(delivery)
                else:
                    stats.failed += 1
        return stats

    # Listings

    async def _list(self, request: Request) -> Response:
        params = request.query_params
        self.requests.append(httpx.QueryParams(str(params)))
        if request.headers.get("authorization") != f"Bearer {self._token}":
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        if request.headers.get("x-github-api-version") != API_VERSION:
            return JSONResponse({"message": "Unsupported API version"}, 400)
        kind = request.path_params["kind"]
        if kind not in ("issues", "pulls"):
            return JSONResponse({"message": "Not Found"}, status_code=404)

        page = int(params.get("page", "1"))
        with self._lock:
            rows, more = self._page(kind, params, page)
        headers = {}
        if more:
            headers["Link"] = f'<{self._next_url(kind, params, page)}>; rel="next"'
        if self.after_page is not None:
            self.after_page(kind, page, rows)
        return JSONResponse(rows, headers=headers)

    def _page(
        self, kind: str, params: Any, page: int
    ) -> tuple[list[dict[str, Any]], bool]:
        per_page = min(int(params.get("per_page", "30")), 100)
        items = list(self._items.values())
        if kind == "pulls":
            items = [item for item in items if item.pull_id is not None]
            rows = [self._pull_json(item) for item in items]
        else:
            rows = [self._issue_json(item) for item in items]
        state = params.get("state", "open")
        if state != "all":
            rows = [row for row in rows if row["state"] == state]
        since = params.get("since")
        if since is not None and kind == "issues":
            rows = [row for row in rows if row["updated_at"] >= since]
        descending = params.get("direction", "desc") == "desc"
        rows.sort(
            key=lambda row: (row["updated_at"], row["number"]), reverse=descending
        )
        start = (page - 1) * per_page
        return rows[start : start + per_page], len(rows) > start + per_page

    def _next_url(self, kind: str, params: Any, page: int) -> str:
        query = [(k, v) for k, v in params.multi_items() if k != "page"]
        query.append(("page", str(page + 1)))
        return f"{self.base_url}/repositories/{REPOSITORY_ID}/{kind}?{urlencode(query)}"

    def _issue_json(self, item: _Item) -> dict[str, Any]:
        api = f"{self.base_url}/repos/{self.repository}"
        issue: dict[str, Any] = {
            "url": f"{api}/issues/{item.number}",
            "repository_url": api,
            "id": item.issue_id,
            "number": item.number,
            "title": item.title,
            "state": item.state,
            "labels": [{"name": name} for name in item.labels],
            "created_at": iso(item.created_at),
            "updated_at": iso(item.updated_at),
            "closed_at": iso(item.closed_at),
        }
        if item.pull_id is not None:
            issue["pull_request"] = {
                "url": f"{api}/pulls/{item.number}",
                "merged_at": iso(item.merged_at),
            }
        return issue

    def _pull_json(self, item: _Item) -> dict[str, Any]:
        api = f"{self.base_url}/repos/{self.repository}"
        return {
            "url": f"{api}/pulls/{item.number}",
            "issue_url": f"{api}/issues/{item.number}",
            "id": item.pull_id,
            "number": item.number,
            "title": item.title,
            "state": item.state,
            "created_at": iso(item.created_at),
            "updated_at": iso(item.pull_updated_at),
            "closed_at": iso(item.closed_at),
            "merged_at": iso(item.merged_at),
            "base": {"repo": {"id": REPOSITORY_ID, "full_name": self.repository}},
        }

    # Server lifecycle

    def serve(self) -> str:
        """Start uvicorn on 127.0.0.1 and a free port; return the base URL."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [listener]},
            name=f"simulated-github-{port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulated GitHub failed to start on port {port}")
            threading.Event().wait(0.01)
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    def stop(self) -> None:
        """Stop the server started by serve() and wait for its thread."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(SERVE_TIMEOUT)
        self._server = None
        self._thread = None
