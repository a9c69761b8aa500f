"""A webhook server with one provider per built-in connector, for body tests.

Each provider comes with a valid body and a signer that signs any body the
provider's way, so a test can send garbage that passes the signature check
and reaches the connector's parser.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlmodel import SQLModel
from starlette.types import ASGIApp

from connectors.registry import load_connector
from syncd import config
from syncd.intake import IntakeState, create_app
from syncd.runtime import Runtime
from syncd.store import Store
from syncd.writer import BatchWriter

FIXTURES = Path(__file__).parent / "fixtures"
T0 = 1714557600  # 2024-05-01T10:00:00Z
API = "http://127.0.0.1:9"
MAX_BODY = 256 * 1024
STANDARD_SECRET = "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA="
STRIPE_SECRET = "whsec_bodies_stripe"
GITHUB_SECRET = "github-bodies"
SHOPIFY_SECRET = "shpss_bodies"
# Bounds each request, so that a hung app fails a test instead of hanging it.
REQUEST_TIMEOUT = 30.0


def _hmac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def sign_stripe(body: bytes, timestamp: int = T0) -> dict[str, str]:
    digest = _hmac(STRIPE_SECRET.encode(), f"{timestamp}.".encode() + body).hex()
    return {"Stripe-Signature": f"t={timestamp},v1={digest}"}


def sign_github(body: bytes, timestamp: int = T0) -> dict[str, str]:
    return {
        "X-GitHub-Event": "issues",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + _hmac(GITHUB_SECRET.encode(), body).hex(),
    }


def sign_shopify(body: bytes, timestamp: int = T0) -> dict[str, str]:
    digest = _hmac(SHOPIFY_SECRET.encode(), body)
    return {
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Topic": "orders/updated",
        "X-Shopify-Event-Id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
    }


def sign_standard(body: bytes, timestamp: int = T0) -> dict[str, str]:
    key = base64.b64decode(STANDARD_SECRET.removeprefix("whsec_"))
    signed = f"msg_bodies.{timestamp}.".encode() + body
    signature = base64.b64encode(_hmac(key, signed)).decode()
    return {
        "webhook-id": "msg_bodies",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


LISTING = {
    "path": "/v1/events",
    "items": "data",
    "id_field": "id",
    "time_field": "timestamp",
    "cursor": {"kind": "timestamp", "param": "after"},
    "pagination": {"kind": "none"},
}
ORDER = {"type": "order.created", "id": "ord_1", "timestamp": "2024-05-01T10:00:00Z"}


def _stripe_body() -> bytes:
    event = {
        "id": "evt_bodies",
        "object": "event",
        "type": "invoice.paid",
        "created": T0,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
    }
    return json.dumps(event).encode()


def _github_body() -> bytes:
    return (FIXTURES / "github/webhooks/issues/edited.payload.json").read_bytes()


def _shopify_body() -> bytes:
    samples = FIXTURES / "shopify/shopify_python_api"
    order = json.loads((samples / "order.json").read_bytes())["order"]
    return json.dumps(order).encode()


@dataclass(frozen=True)
class Provider:
    """One configured provider: its table, a valid body and its signer."""

    name: str
    table: dict[str, Any]
    body: bytes
    sign: Callable[..., dict[str, str]]

    @property
    def path(self) -> str:
        return f"/webhooks/{self.name}"

    def signed(self, body: bytes, **extra: str) -> dict[str, str]:
        """Return headers that sign ``body``, with a JSON Content-Type."""
        return {"Content-Type": "application/json", **self.sign(body), **extra}


PROVIDERS = [
    Provider(
        "stripe",
        {
            "connector": "stripe",
            "api_base_url": API,
            "webhook_secret": STRIPE_SECRET,
            "signature_tolerance": "5m",
        },
        _stripe_body(),
        sign_stripe,
    ),
    Provider(
        "github",
        {
            "connector": "github",
            "api_base_url": API,
            "webhook_secret": GITHUB_SECRET,
            "repositories": ["Codertocat/Hello-World"],
        },
        _github_body(),
        sign_github,
    ),
    Provider(
        "shopify",
        {
            "connector": "shopify",
            "api_base_url": API,
            "webhook_secret": SHOPIFY_SECRET,
            "api_version": "2024-04",
        },
        _shopify_body(),
        sign_shopify,
    ),
    Provider(
        "standard",
        {
            "connector": "standard-webhooks",
            "api_base_url": API,
            "webhook_secret": STANDARD_SECRET,
            "signature_tolerance": "5m",
            "key_field": "id",
            "time_field": "timestamp",
            "listing": LISTING,
        },
        json.dumps(ORDER).encode(),
        sign_standard,
    ),
    Provider(
        "rest",
        {
            "connector": "rest",
            "api_base_url": API,
            "webhook_secret": STANDARD_SECRET,
            "signature_tolerance": "5m",
            "webhook": {"kind": "standard-webhooks"},
            **LISTING,
        },
        json.dumps(ORDER).encode(),
        sign_standard,
    ),
]
BY_NAME = {provider.name: provider for provider in PROVIDERS}


class Clock:
    """A fixed Unix clock that a test may move."""

    def __init__(self, now: float = T0 + 10) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class App:
    """A webhook server app with its store and clock."""

    app: ASGIApp
    state: IntakeState
    store: Store
    clock: Clock

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Send one POST into the app and return the response."""

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                request = client.post(path, content=body, headers=headers)
                return await asyncio.wait_for(request, REQUEST_TIMEOUT)

        return asyncio.run(send())

    def get(self, path: str) -> httpx.Response:
        """Send one GET into the app and return the response."""

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                return await asyncio.wait_for(client.get(path), REQUEST_TIMEOUT)

        return asyncio.run(send())


@contextmanager
def open_app(store: Store, clock: Clock | None = None, **daemon: Any) -> Iterator[App]:
    """Build the webhook app over ``store`` with every provider of PROVIDERS."""
    clock = clock or Clock()
    settings = config.parse(
        {
            "daemon": {"database": store.url, "max_body": MAX_BODY, **daemon},
            "providers": {p.name: p.table for p in PROVIDERS},
        }
    )
    connectors = {
        name: load_connector(provider.connector)(provider)
        for name, provider in settings.providers.items()
    }
    runtime = Runtime(config=settings, store=store, connectors=connectors, clock=clock)
    writer = BatchWriter(store, clock=lambda: _as_datetime(clock()))
    state = IntakeState(runtime=runtime, writer=writer)
    writer.start()
    try:
        yield App(create_app(state), state, store, clock)
    finally:
        writer.stop()


def _as_datetime(now: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(now, UTC)


def row_counts(store: Store) -> dict[str, int]:
    """Return the number of rows of every table of the store."""
    counts = {}
    with store.session() as session:
        for table in SQLModel.metadata.sorted_tables:
            statement = select(func.count()).select_from(table)
            counts[table.name] = session.execute(statement).scalar_one()
    return counts
