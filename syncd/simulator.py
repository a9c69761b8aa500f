"""Simulated Stripe provider on loopback: the events list API and webhook deliveries.

`SimulatedStripe` keeps an in-memory list of Stripe event objects, serves them from
``GET /v1/events`` with Stripe's cursor semantics and sends them as signed webhooks.
``syncd demo`` and the end-to-end tests use it in place of api.stripe.com. Ids, the
event mix and dropped or repeated deliveries come from ``seed``. Every timestamp
(``created``, visibility, signatures) comes from the injected ``clock``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import operator
import random
import re
import socket
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

logger = logging.getLogger(__name__)

API_VERSION = "2024-06-20"
WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_TYPES = 20  # maximum values in `types`, per Stripe's events list reference
RETENTION = 30 * 86400  # seconds: like Stripe, list only events of the last 30 days
MAX_COPIES = 3  # maximum number of POSTs of one repeated event in deliver()
LARGE_AMOUNT = 2**53 + 1  # a float64 JSON parser rounds it to 2**53
SERVE_TIMEOUT = 5.0  # seconds that serve() and stop() wait for uvicorn
MIXED_EVENT_TYPES = (
    "customer.created",
    "customer.updated",
    "invoice.created",
    "invoice.paid",
    "charge.succeeded",
    "customer.subscription.created",
    "customer.subscription.updated",
)
# Resource kind per event type prefix: object name, id prefix, random id length.
_KINDS = (
    ("customer.subscription.", "subscription", "sub_", 24),
    ("customer.", "customer", "cus_", 14),
    ("invoice.", "invoice", "in_", 24),
    ("charge.", "charge", "ch_", 24),
)
_CUSTOMERS = (
    ("Zoë Faure", "zoe.faure@example.com"),
    ("Ada Okafor", "ada.okafor@example.com"),
    ("Jonas Berg", "jonas.berg@example.com"),
)
_ALPHANUMERIC = string.ascii_letters + string.digits
_CREATED_PARAM = re.compile(r"created\[(gte|gt|lte|lt)\]")
_TYPES_PARAM = re.compile(r"types\[\d*\]")  # types[]=a or types[0]=a
# Real Stripe list parameters that the simulator rejects instead of ignoring.
_UNSUPPORTED_PARAM = re.compile(r"delivery_success|expand(\[\d*\])?")
_COMPARE = {
    "eq": operator.eq,
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
}


@dataclass
class DeliveryStats:
    """Counts of one deliver() call. ``sent`` equals ``delivered + failed``.

    ``sent``, ``delivered`` and ``failed`` count POST requests, repeats included.
    ``dropped`` and ``repeated`` count events. ``delivered_ids`` lists each event
    with at least one 2xx response once, in send order.
    """

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    repeated: int = 0
    failed: int = 0
    dropped_ids: list[str] = field(default_factory=list)
    delivered_ids: list[str] = field(default_factory=list)


class _StripeError(Exception):
    """Error response in Stripe's shape: HTTP status, ``error`` object, headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"type": error_type, "message": message}
        if param is not None:
            self.body["param"] = param
        if code is not None:
            self.body["code"] = code
        self.headers = headers or {}


@dataclass(frozen=True)
class _Record:
    """Stored event with its emit sequence number and clock time of visibility."""

    event: dict[str, Any]
    seq: int
    visible_at: float

    @property
    def key(self) -> tuple[int, int]:
        return (self.event["created"], self.seq)


@dataclass
class _ListQuery:
    """Parsed query parameters of ``GET /v1/events``."""

    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None
    ending_before: str | None = None
    created: list[tuple[str, int]] = field(default_factory=list)
    type_pattern: re.Pattern[str] | None = None
    types: set[str] = field(default_factory=set)

    def matches(self, event: dict[str, Any]) -> bool:
        for name, bound in self.created:
            if not _COMPARE[name](event["created"], bound):
                return False
        if self.type_pattern and not self.type_pattern.fullmatch(event["type"]):
            return False
        return not self.types or event["type"] in self.types


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _StripeError(400, f"Invalid integer: {value!r}", param=name) from None


def _apply_param(query: _ListQuery, name: str, value: str) -> None:
    if name == "limit":
        query.limit = _parse_int(name, value)
    elif name in ("starting_after", "ending_before"):
        setattr(query, name, value or None)
    elif name == "created":
        query.created.append(("eq", _parse_int(name, value)))
    elif match := _CREATED_PARAM.fullmatch(name):
        query.created.append((match[1], _parse_int(name, value)))
    elif name == "type":
        # `type` accepts `*` as a wildcard, as in `customer.*`.
        pattern = re.escape(value).replace(r"\*", ".*")
        query.type_pattern = re.compile(pattern)
    elif _TYPES_PARAM.fullmatch(name):
        query.types.add(value)
    elif _UNSUPPORTED_PARAM.fullmatch(name):
        message = f"Parameter {name} is not supported by the simulated Stripe."
        raise _StripeError(400, message, param=name)
    else:
        raise _StripeError(400, f"Received unknown parameter: {name}", param=name)


def _parse_list_query(params: QueryParams) -> _ListQuery:
    """Parse and validate the list parameters, raising _StripeError with 400.

    NOTE: the error messages follow Stripe's error shape, not its exact wording.
    """
    query = _ListQuery()
    for name, value in params.multi_items():
        _apply_param(query, name, value)
    if not 1 <= query.limit <= MAX_LIMIT:
        message = f"Invalid limit {query.limit}: it must be between 1 and {MAX_LIMIT}."
        raise _StripeError(400, message, param="limit")
    if query.starting_after and query.ending_before:
        message = "Send only one of starting_after and ending_before."
        raise _StripeError(400, message, param="ending_before")
    if query.type_pattern and query.types:
        raise _StripeError(400, "Send only one of type and types.", param="types")
    if len(query.types) > MAX_TYPES:
        message = f"Too many types: {len(query.types)}, the maximum is {MAX_TYPES}."
        raise _StripeError(400, message, param="types")
    return query


def _json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    content = json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")
    return Response(content, status, headers, media_type="application/json")


def _simulated_failure(status: int, retry_after: int | None) -> _StripeError:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    if status == 429:
        message = "Too many requests hit the API too quickly (simulated)."
        return _StripeError(status, message, code="rate_limit", headers=headers)
    error_type = "api_error" if status >= 500 else "invalid_request_error"
    message = f"Simulated failure with HTTP {status}. Retry the request."
    return _StripeError(status, message, error_type=error_type, headers=headers)


def _resource_kind(event_type: str) -> tuple[str, str, int]:
    for prefix, name, id_prefix, length in _KINDS:
        if event_type.startswith(prefix):
            return name, id_prefix, length
    name = event_type.rsplit(".", 1)[0].replace(".", "_")
    return name, f"{name}_", 24


class SimulatedStripe:
    """Stripe-like events API and webhook sender, deterministic for a seed and clock.

    ``requests`` counts every ``GET /v1/events`` request, failed ones included.
    """

    def __init__(
        self,
        *,
        api_key: str,
        webhook_secret: str,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api_key = api_key
        self._webhook_secret = webhook_secret
        self._clock = clock
        self._id_rng = random.Random(f"{seed}:ids")
        self._mix_rng = random.Random(f"{seed}:mix")
        self._delivery_rng = random.Random(f"{seed}:deliveries")
        self._lock = threading.Lock()
        self._records: list[_Record] = []
        self._by_id: dict[str, _Record] = {}
        self._resources: dict[str, dict[str, Any]] = {}
        self._failures: deque[tuple[int, int | None]] = deque()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self.requests = 0
        routes = [Route("/v1/events", self._list_events, methods=["GET"])]
        self.app = Starlette(routes=routes)

    # Event creation

    def emit(
        self,
        event_type: str,
        *,
        created: int | None = None,
        visible_delay: float = 0.0,
        object_id: str | None = None,
    ) -> dict[str, Any]:
        """Append one event to the true list and return a copy of it.

        ``created`` defaults to ``int(clock())``. /v1/events lists the event once the
        clock reaches the emit time plus ``visible_delay`` seconds. Without
        ``object_id``, an event whose type does not end in ``.created`` refers to an
        earlier resource of its kind when one exists. Types outside customer,
        invoice, charge and subscription get a minimal resource named after them.
        """
        if visible_delay < 0:
            raise ValueError(f"invalid visible_delay {visible_delay}: must be >= 0")
        with self._lock:
            now = self._clock()
            created = int(now) if created is None else created
            event = self._build_event(event_type, created, object_id)
            record = _Record(event, len(self._records), now + visible_delay)
            self._records.append(record)
            self._by_id[event["id"]] = record
        logger.debug("emitted %s %s created=%d", event["type"], event["id"], created)
        return copy.deepcopy(event)

    def emit_many(self, count: int, *, same_second_groups: int = 0) -> list[dict]:
        """Emit ``count`` events of mixed types, one second apart, the newest now.

        ``same_second_groups`` runs of 3 to 6 consecutive events share one
        ``created`` second. Raises ValueError if the runs do not fit in ``count``.
        """
        seconds = self._plan_seconds(count, same_second_groups)
        newest = int(self._clock())
        events = []
        for index, size in enumerate(seconds):
            created = newest - (len(seconds) - 1 - index)
            for _ in range(size):
                event_type = self._mix_rng.choice(MIXED_EVENT_TYPES)
                events.append(self.emit(event_type, created=created))
        return events

    def truth(self) -> list[str]:
        """Return the ids of every emitted event, visible or not, in emit order."""
        with self._lock:
            return [record.event["id"] for record in self._records]

    def _plan_seconds(self, count: int, groups: int) -> list[int]:
        """Return the number of events per distinct second, oldest second first."""
        if count < 0 or groups < 0 or 3 * groups > count:
            raise ValueError(
                f"invalid count={count} or same_second_groups={groups}: "
                "each group needs 3 events, so count must be >= 3 * groups"
            )
        sizes = [self._mix_rng.randint(3, 6) for _ in range(groups)]
        while sum(sizes) > count:
            sizes[sizes.index(max(sizes))] -= 1
        seconds = sizes + [1] * (count - sum(sizes))
        self._mix_rng.shuffle(seconds)
        return seconds

    def _build_event(
        self, event_type: str, created: int, object_id: str | None
    ) -> dict[str, Any]:
        event_id = self._random_id("evt_", 24)
        resource = self._build_resource(event_type, object_id, created)
        data: dict[str, Any] = {"object": resource}
        if event_type.endswith(".updated"):
            data["previous_attributes"] = self._update_metadata(data["object"])
        return {
            "id": event_id,
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {
                "id": self._random_id("req_", 14),
                "idempotency_key": str(
                    uuid.UUID(int=self._id_rng.getrandbits(128), version=4)
                ),
            },
            "type": event_type,
        }

    def _build_resource(
        self, event_type: str, object_id: str | None, created: int
    ) -> dict[str, Any]:
        name, id_prefix, length = _resource_kind(event_type)
        if object_id is None and not event_type.endswith(".created"):
            object_id = self._existing_id(name)
        object_id = object_id or self._random_id(id_prefix, length)
        if object_id not in self._resources:
            self._resources[object_id] = self._new_resource(name, object_id, created)
        resource = copy.deepcopy(self._resources[object_id])
        if event_type == "invoice.paid":
            paid = {"status": "paid", "amount_paid": resource["amount_due"]}
            resource.update(paid, amount_remaining=0)
        return resource

    def _update_metadata(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Change the resource's metadata and return its previous_attributes."""
        previous = {"metadata": dict(resource["metadata"])}
        resource["metadata"]["revision"] = str(len(self._records) + 1)
        self._resources[resource["id"]]["metadata"] = dict(resource["metadata"])
        return previous

    def _existing_id(self, name: str) -> str | None:
        known = [key for key, res in self._resources.items() if res["object"] == name]
        return self._id_rng.choice(known) if known else None

    def _count_resources(self, name: str) -> int:
        return sum(value["object"] == name for value in self._resources.values())

    def _new_resource(self, name: str, object_id: str, created: int) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": object_id,
            "object": name,
            "created": created,
            "livemode": False,
            "metadata": {},
        }
        if name == "customer":
            count = self._count_resources("customer")
            full_name, email = _CUSTOMERS[count % len(_CUSTOMERS)]
            resource.update(name=full_name, email=email, balance=0, delinquent=False)
        elif name == "invoice":
            resource.update(self._invoice_fields())
        elif name == "charge":
            amount = self._id_rng.randrange(500, 50_000)
            resource.update(amount=amount, amount_captured=amount, amount_refunded=0)
            resource.update(captured=True, paid=True, status="succeeded")
        elif name == "subscription":
            resource.update(status="active", cancel_at_period_end=False)
        if name in ("invoice", "charge", "subscription"):
            resource.update(currency="usd", customer=self._customer_id())
        return resource

    def _invoice_fields(self) -> dict[str, Any]:
        count = 1 + self._count_resources("invoice")
        amount = self._id_rng.randrange(500, 50_000)
        if count % 4 == 0:  # every fourth invoice, to test exact storage
            amount = LARGE_AMOUNT
        return {
            "number": f"SIM-{count:04d}",
            "status": "open",
            "amount_due": amount,
            "amount_paid": 0,
            "amount_remaining": amount,
        }

    def _customer_id(self) -> str:
        return self._existing_id("customer") or self._random_id("cus_", 14)

    def _random_id(self, prefix: str, length: int) -> str:
        return prefix + "".join(self._id_rng.choices(_ALPHANUMERIC, k=length))

    # Webhooks

    def webhook_body(self, event: dict[str, Any]) -> bytes:
        """Serialize an event as a webhook body: indented JSON, UTF-8, not escaped."""
        return json.dumps(event, indent=2, ensure_ascii=False).encode("utf-8")

    def sign(self, body: bytes, timestamp: int | None = None) -> str:
        """Return the Stripe-Signature header value for ``body``.

        ``timestamp`` defaults to ``int(clock())``. The v1 signature is the hex
        HMAC-SHA256 of ``f"{timestamp}." + body`` keyed with the webhook secret.
        """
        if timestamp is None:
            timestamp = int(self._clock())
        signed = f"{timestamp}.".encode() + body
        secret = self._webhook_secret.encode()
        signature = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={signature}"

    def deliver(
        self,
        url: str,
        events: list[dict],
        *,
        drop_rate: float = 0.0,
        repeat_rate: float = 0.0,
        reorder: bool = False,
        concurrency: int = 4,
    ) -> DeliveryStats:
        """POST each event to ``url`` as a signed webhook and count the outcomes.

        The seeded RNG drops each event with probability ``drop_rate``. It sends
        a kept event again with probability ``repeat_rate``, up to MAX_COPIES
        times in all. ``reorder`` shuffles all POSTs. Otherwise the copies of an
        event follow each other. With ``concurrency`` above 1 the POSTs overlap,
        so the receiver may see them slightly out of order even without
        ``reorder``. Failed POSTs are not retried, unlike Stripe's retries.
        Signatures use the injected clock, so a receiver that checks the timestamp
        against another clock may reject them as too old.
        """
        for name, rate in (("drop_rate", drop_rate), ("repeat_rate", repeat_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"invalid {name} {rate}: must be between 0 and 1")
        if concurrency < 1:
            raise ValueError(f"invalid concurrency {concurrency}: must be >= 1")
        stats = DeliveryStats()
        posts = self._plan_posts(events, drop_rate, repeat_rate, reorder, stats)
        # trust_env=False keeps proxy variables from routing loopback POSTs elsewhere.
        with (
            httpx.Client(timeout=10.0, trust_env=False) as client,
            ThreadPoolExecutor(max_workers=concurrency) as pool,
        ):
            outcomes = list(pool.map(lambda e: self._post(client, url, e), posts))
        for event, ok in zip(posts, outcomes, strict=True):
            stats.sent += 1
            if not ok:
                stats.failed += 1
                continue
            stats.delivered += 1
            if event["id"] not in stats.delivered_ids:
                stats.delivered_ids.append(event["id"])
        return stats

    def _plan_posts(
        self,
        events: list[dict],
        drop_rate: float,
        repeat_rate: float,
        reorder: bool,
        stats: DeliveryStats,
    ) -> list[dict]:
        """Return the POSTs to make in order, recording drops and repeats in stats."""
        posts: list[dict] = []
        for event in events:
            if self._delivery_rng.random() < drop_rate:
                stats.dropped += 1
                stats.dropped_ids.append(event["id"])
                continue
            copies = 1
            while copies < MAX_COPIES and self._delivery_rng.random() < repeat_rate:
                copies += 1
            stats.repeated += copies > 1
            posts.extend([event] * copies)
        if reorder:
            self._delivery_rng.shuffle(posts)
        return posts

    def _post(self, client: httpx.Client, url: str, event: dict) -> bool:
        body = self.webhook_body(event)
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": self.sign(body),
            "User-Agent": WEBHOOK_USER_AGENT,
        }
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            logger.warning(
                "webhook POST of %s to %s failed: %r", event["id"], url, error
            )
            return False
        if not response.is_success:
            logger.info(
                "webhook POST of %s to %s got HTTP %d",
                event["id"],
                url,
                response.status_code,
            )
        return response.is_success

    # The /v1/events endpoint

    def fail_next(
        self, count: int, status: int = 500, retry_after: int | None = None
    ) -> None:
        """Make the next ``count`` /v1/events requests fail with ``status``.

        The failures queue after any pending ones and come before the API key check.
        ``retry_after`` (seconds) adds a Retry-After header.
        """
        if count < 0 or not 400 <= status <= 599:
            raise ValueError(
                f"invalid count={count} or status={status}: "
                "count must be >= 0 and status an HTTP error code (400-599)"
            )
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    async def _list_events(self, request: Request) -> Response:
        with self._lock:
            self.requests += 1
            failure = self._failures.popleft() if self._failures else None
        try:
            if failure is not None:
                logger.info(
                    "responding to /v1/events with simulated HTTP %d", failure[0]
                )
                raise _simulated_failure(*failure)
            self._authenticate(request.headers.get("authorization"))
            body = self._list_page(_parse_list_query(request.query_params))
        except _StripeError as error:
            return _json_response({"error": error.body}, error.status, error.headers)
        return _json_response(body)

    def _authenticate(self, header: str | None) -> None:
        # NOTE: real Stripe also accepts the key as the Basic auth user name.
        if header is None or not header.startswith("Bearer "):
            message = (
                "You did not provide an API key. Send it in the Authorization header "
                "as 'Bearer <key>'."
            )
            raise _StripeError(401, message)
        key = header.removeprefix("Bearer ")
        if not hmac.compare_digest(key.encode(), self._api_key.encode()):
            masked = "****" + key[-4:] if len(key) > 8 else "****"
            raise _StripeError(401, f"Invalid API Key provided: {masked}")

    def _list_page(self, query: _ListQuery) -> dict[str, Any]:
        """Return one list page, newest first by (created, seq).

        Only visible events created within RETENTION seconds of the clock count.
        Both cursors compare (created, seq) keys, so an event that becomes visible
        later lands on its own side of the cursor and never shifts a page boundary.
        """
        with self._lock:
            anchor = self._find_cursor(query)
            now = self._clock()
            rows = [
                record
                for record in self._records
                if record.visible_at <= now
                and record.event["created"] >= now - RETENTION
                and query.matches(record.event)
            ]
        rows.sort(key=lambda record: record.key, reverse=True)
        if query.ending_before is not None and anchor is not None:
            # The page closest to the cursor, still returned newest first.
            newer = [record for record in rows if record.key > anchor.key]
            page, has_more = newer[-query.limit :], len(newer) > query.limit
        else:
            if anchor is not None:
                rows = [record for record in rows if record.key < anchor.key]
            page, has_more = rows[: query.limit], len(rows) > query.limit
        data = [record.event for record in page]
        return {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "url": "/v1/events",
        }

    def _find_cursor(self, query: _ListQuery) -> _Record | None:
        param = "ending_before" if query.ending_before else "starting_after"
        cursor = query.ending_before or query.starting_after
        if cursor is None:
            return None
        record = self._by_id.get(cursor)
        if record is None:
            message = f"No such event: '{cursor}'"
            raise _StripeError(400, message, param=param, code="resource_missing")
        return record

    # Server lifecycle

    def serve(self) -> str:
        """Start uvicorn on 127.0.0.1 and a free port in a daemon thread.

        Waits until the server accepts connections and returns its base URL.
        """
        if self._server is not None:
            raise RuntimeError("SimulatedStripe is already serving; call stop() first")
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._listener]},
            name=f"simulated-stripe-{port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + SERVE_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulated Stripe failed to start on port {port}")
            time.sleep(0.01)
        logger.info("simulated Stripe serving on http://127.0.0.1:%d", port)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop the server started by serve() and wait for its thread to end."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(SERVE_TIMEOUT)
        if self._thread.is_alive():
            logger.warning("simulated Stripe thread did not stop in %ss", SERVE_TIMEOUT)
        if self._listener is not None:
            self._listener.close()  # uvicorn closes it too, unless startup failed
        self._server = None
        self._thread = None
        self._listener = None
        logger.info("simulated Stripe stopped")
