"""Malformed and unusual webhook bodies, signed, through the app of each connector."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import select

from syncd.bodies import BodyTooLargeError, read_body
from syncd.models import Event
from syncd.store import Store
from tests.webhook_apps import BY_NAME, PROVIDERS, App, Provider, open_app, row_counts

NAMES = [provider.name for provider in PROVIDERS]


@pytest.fixture
def app(store: Store) -> Iterator[App]:
    with open_app(store) as opened:
        yield opened


def with_field(body: bytes, text: str) -> bytes:
    """Return a JSON object body with ``text`` added as its last members."""
    stripped = body.rstrip()
    assert stripped.endswith(b"}")
    return stripped[:-1] + b"," + text.encode() + b"}"


def payloads(store: Store) -> list[str]:
    with store.session() as session:
        return list(session.scalars(select(Event.payload)))


def keys(store: Store) -> list[str]:
    with store.session() as session:
        return list(session.scalars(select(Event.key)))


def send(app: App, provider: Provider, body: bytes, **headers: str):
    return app.post(provider.path, body, provider.signed(body, **headers))


BAD_BODIES = {
    "invalid_utf8": (
        lambda body: with_field(body, '"x": "\xff"').replace("\xff".encode(), b"\xff"),
        "not valid UTF-8",
    ),
    "deep_nesting": (
        lambda body: with_field(body, '"x": ' + "[" * 5000 + "]" * 5000),
        "nested deeper than",
    ),
    "nesting_500": (
        lambda body: with_field(body, '"x": ' + "[" * 500 + "]" * 500),
        "nested deeper than 200 levels",
    ),
    "duplicate_keys": (
        lambda body: with_field(body, '"dup": 1, "dup": 2'),
        "duplicate key 'dup'",
    ),
    "nan": (lambda body: with_field(body, '"x": NaN'), "NaN is not valid JSON"),
    "infinite_float": (
        lambda body: with_field(body, '"x": -1e999'),
        "number -1e999 is beyond the range of a 64-bit float",
    ),
    "huge_integer": (
        lambda body: with_field(body, '"x": ' + "9" * 5000),
        "not valid JSON",
    ),
    "utf16": (lambda body: body.decode().encode("utf-16"), "not valid UTF-8"),
    "truncated": (lambda body: body[: len(body) // 2], "not valid JSON"),
    "empty": (lambda body: b"", "not valid JSON"),
}


@pytest.mark.parametrize("kind", sorted(BAD_BODIES))
@pytest.mark.parametrize("name", NAMES)
def test_bad_body_400(app: App, store: Store, name: str, kind: str) -> None:
    """A signed body that is not storable JSON gets 400 and changes nothing."""
    provider = BY_NAME[name]
    build, message = BAD_BODIES[kind]
    body = build(provider.body)
    before = row_counts(store)

    response = send(app, provider, body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert row_counts(store) == before


@pytest.mark.parametrize("name", NAMES)
def test_big_integer_exact(app: App, store: Store, name: str) -> None:
    """An integer beyond 64 bits is stored with every digit."""
    provider = BY_NAME[name]
    big = str(2**70 + 1)
    body = with_field(provider.body, f'"amount_big": {big}')

    response = send(app, provider, body)

    assert response.status_code == 200
    assert any(big in payload for payload in payloads(store))


def test_big_integer_id_exact(app: App, store: Store) -> None:
    """A Shopify id beyond 64 bits is kept exactly in the dedup key."""
    provider = BY_NAME["shopify"]
    order = json.loads(provider.body)
    order["id"] = 2**70 + 3
    body = json.dumps(order).encode()

    response = send(app, provider, body)

    assert response.status_code == 200
    assert keys(store)[0].startswith(f"order:{2**70 + 3}:")


@pytest.mark.parametrize("name", NAMES)
def test_missing_content_type_ok(app: App, store: Store, name: str) -> None:
    """A signed JSON body without Content-Type is accepted."""
    provider = BY_NAME[name]
    headers = provider.sign(provider.body)

    response = app.post(provider.path, provider.body, headers)

    assert response.status_code == 200
    assert len(payloads(store)) >= 1


CONTENT_TYPES = {
    "text/plain": 415,
    "application/x-www-form-urlencoded": 415,
    "multipart/form-data; boundary=x": 415,
    "application/json; charset=iso-8859-1": 415,
    "application/json; charset=utf-16": 415,
    "application/json; charset=UTF-8": 200,
    "application/vnd.provider+json": 200,
    "Application/JSON": 200,
}


@pytest.mark.parametrize("content_type", sorted(CONTENT_TYPES))
@pytest.mark.parametrize("name", NAMES)
def test_content_type_status(
    app: App, store: Store, name: str, content_type: str
) -> None:
    """Each Content-Type gets its defined status; 415 leaves the store as it was."""
    provider = BY_NAME[name]
    before = row_counts(store)

    response = send(app, provider, provider.body, **{"Content-Type": content_type})

    assert response.status_code == CONTENT_TYPES[content_type]
    if response.status_code == 415:
        assert "application/json" in response.json()["error"]
        assert row_counts(store) == before


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
@pytest.mark.parametrize("name", ["stripe", "standard"])
def test_unstorable_key_400(app: App, store: Store, name: str, escape: str) -> None:
    """A dedup key with a NUL or a lone surrogate gets 400, not a failed batch."""
    provider = BY_NAME[name]
    document = json.loads(provider.body)
    document["id"] = "evt_x"
    body = json.dumps(document).encode().replace(b"evt_x", f"evt{escape}".encode())
    before = row_counts(store)

    response = send(app, provider, body)

    assert response.status_code == 400
    assert "contains" in response.json()["error"]
    assert row_counts(store) == before


def test_unstorable_key_spares_batch(app: App, store: Store) -> None:
    """A good webhook sent after a NUL-keyed one is still stored."""
    provider = BY_NAME["stripe"]
    bad = provider.body.replace(b"evt_bodies", b"evt\\u0000")
    send(app, provider, bad)

    response = send(app, provider, provider.body)

    assert response.status_code == 200
    assert keys(store) == ["evt_bodies"]


def test_non_ascii_payload_exact(app: App, store: Store) -> None:
    """A body with escapes and non-ASCII text is stored byte for byte."""
    provider = BY_NAME["stripe"]
    body = with_field(provider.body, '"note": "Zo\\u00eb \u00eb \\ud83d\\ude00"')
    body = body.decode().encode("utf-8")

    response = send(app, provider, body)

    assert response.status_code == 200
    assert payloads(store) == [body.decode("utf-8")]


# One byte over a max_body of "1KB" (1000 bytes).
OVERSIZED = b" " * 1001
OVER_LIMIT_CASES = {
    "declared": ({"content-length": "1001"}, OVERSIZED),
    "streamed": ({}, OVERSIZED),
    "gzip": ({"content-encoding": "gzip"}, gzip.compress(OVERSIZED)),
    "deflate": ({"content-encoding": "deflate"}, zlib.compress(OVERSIZED)),
}


async def stream_in_chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 256):
        yield data[start : start + 256]


@pytest.mark.parametrize("case", OVER_LIMIT_CASES)
def test_over_limit_names_max_body(case: str) -> None:
    """A body over the limit, as sent or once inflated, names limit and setting."""
    headers, body = OVER_LIMIT_CASES[case]

    with pytest.raises(BodyTooLargeError) as caught:
        asyncio.run(read_body(headers, stream_in_chunks(body), 1000))

    assert "over the 1000-byte limit" in str(caught.value)
    assert "[daemon] max_body" in str(caught.value)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_inflated_over_limit_413(store: Store, encoding: str) -> None:
    """A compressed body that inflates past max_body gets 413 naming the limit."""
    provider = BY_NAME["stripe"]
    _, body = OVER_LIMIT_CASES[encoding]
    with open_app(store, max_body="1KB", max_buffered="1KB") as app:
        response = send(app, provider, body, **{"Content-Encoding": encoding})

    assert response.status_code == 413
    assert "over the 1000-byte limit" in response.json()["error"]
    assert "[daemon] max_body" in response.json()["error"]


def test_buffers_full_503(store: Store) -> None:
    """A body that would pass max_buffered while another is held gets 503."""
    provider = BY_NAME["stripe"]
    held = b" " * 100_000
    with open_app(store, max_body="150KB", max_buffered="150KB") as app:

        async def scenario() -> tuple[int, int, int]:
            release = asyncio.Event()

            async def slow_chunks() -> AsyncIterator[bytes]:
                yield held
                await release.wait()
                yield provider.body

            transport = httpx.ASGITransport(app=app.app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                first = asyncio.create_task(
                    client.post(
                        provider.path,
                        content=slow_chunks(),
                        headers=provider.signed(held + provider.body),
                    )
                )
                while app.state.buffers.used < len(held):
                    await asyncio.sleep(0.001)
                body = with_field(provider.body, '"pad": "' + "p" * 60_000 + '"')
                second = await client.post(
                    provider.path, content=body, headers=provider.signed(body)
                )
                used_while_held = app.state.buffers.used
                release.set()
                return (await first).status_code, second.status_code, used_while_held

        first, second, used = asyncio.run(asyncio.wait_for(scenario(), 30))
        after = app.state.buffers.used

    assert second == 503
    assert first == 200
    assert used == len(held)
    assert after == 0
