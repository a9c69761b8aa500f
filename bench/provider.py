"""A bench-only Stripe ``/v1/events`` server that can list a million events.

``syncd.simulator.SimulatedStripe`` filters and sorts its whole event list on
every request, which is right for tests but quadratic over a 200,000-event
listing. This server keeps the same paging contract (newest first,
``starting_after`` by event id, inclusive ``created[gte]``/``created[lte]``,
``limit`` from 1 to 100, ``has_more``) over events that it generates from
their index, so a page costs only the events on it. Event ``i`` has the id
``evt_bench{i:015d}`` and was created ``i`` seconds before ``newest``, one
event per second.

Run it as ``python bench/provider.py PORT COUNT NEWEST``; it serves on
127.0.0.1 only.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

API_KEY = "sk_test_bench"
MAX_LIMIT = 100
ID_PREFIX = "evt_bench"
TYPES = ("customer.created", "invoice.paid", "charge.succeeded")


def event_id(index: int) -> str:
    return f"{ID_PREFIX}{index:015d}"


def event_json(index: int, newest: int) -> str:
    """Return one Stripe-shaped event object of about 700 bytes as JSON."""
    kind = TYPES[index % len(TYPES)]
    created = newest - index
    resource = {
        "id": f"ch_bench{index:015d}",
        "object": "charge",
        "amount": 1000 + index % 50_000,
        "amount_captured": 1000 + index % 50_000,
        "currency": "usd",
        "customer": f"cus_bench{index % 997:06d}",
        "description": "Bench charge for a subscription renewal",
        "created": created,
        "livemode": False,
        "metadata": {"order": str(index), "note": "généré pour le banc d'essai"},
        "status": "succeeded",
    }
    event = {
        "id": event_id(index),
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "data": {"object": resource},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": f"req_bench{index:010d}", "idempotency_key": None},
        "type": kind,
    }
    return json.dumps(event, ensure_ascii=False)


class EventList:
    """``count`` generated events, newest (index 0) first."""

    def __init__(self, count: int, newest: int) -> None:
        self.count = count
        self.newest = newest

    def page(self, params: dict[str, str]) -> tuple[int, bytes]:
        """Return the HTTP status and body of one list request."""
        limit = int(params.get("limit", "10"))
        if not 1 <= limit <= MAX_LIMIT:
            return 400, _error(f"Invalid limit {limit}", "limit")
        first, end = self._window(params)
        after = params.get("starting_after")
        if after is not None:
            index = self._index_of(after)
            if index is None:
                return 400, _error(f"No such event: '{after}'", "starting_after")
            first = max(first, index + 1)
        last = min(end, first + limit)
        items = ",".join(event_json(i, self.newest) for i in range(first, last))
        has_more = "true" if last < end else "false"
        body = f'{{"object":"list","data":[{items}],"has_more":{has_more},'
        body += '"url":"/v1/events"}'
        return 200, body.encode("utf-8")

    def _window(self, params: dict[str, str]) -> tuple[int, int]:
        """Return the index range [first, end) inside the created bounds."""
        first, end = 0, self.count
        if "created[lte]" in params:
            first = max(first, self.newest - int(params["created[lte]"]))
        if "created[gte]" in params:
            end = min(end, self.newest - int(params["created[gte]"]) + 1)
        return max(first, 0), max(end, 0)

    def _index_of(self, value: str) -> int | None:
        if not value.startswith(ID_PREFIX):
            return None
        try:
            index = int(value.removeprefix(ID_PREFIX))
        except ValueError:
            return None
        return index if 0 <= index < self.count else None


def _error(message: str, param: str) -> bytes:
    error = {"type": "invalid_request_error", "message": message, "param": param}
    return json.dumps({"error": error}).encode()


def create_app(events: EventList) -> Starlette:
    async def list_events(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return Response(_error("Invalid API Key", "key"), 401)
        status, body = events.page(dict(request.query_params))
        return Response(body, status, media_type="application/json")

    return Starlette(routes=[Route("/v1/events", list_events, methods=["GET"])])


def main() -> None:
    port, count, newest = (int(arg) for arg in sys.argv[1:4])
    app = create_app(EventList(count, newest))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    server.run()


if __name__ == "__main__":
    main()
