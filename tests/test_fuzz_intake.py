"""Fuzzing of the webhook server with hypothesis, through the app and a real store.

Each case is one POST with random headers, body, Content-Encoding and
signature (none, garbage, valid, or valid over a stale timestamp) to one of
the providers of ``tests.webhook_apps`` or an unknown one. Every response must
be a defined status, a rejected request must leave every table's row count
as it was, and the app must keep serving.

The CI profile runs 200 derandomized examples per store; ``bench/fuzz_intake.py``
runs 10,000 or more through :func:`check_case`.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.store import Store
from tests.webhook_apps import BY_NAME, PROVIDERS, T0, App, open_app, row_counts

ALLOWED = {200, 400, 401, 404, 413, 415, 503}
CI_EXAMPLES = 200

HEADER_NAMES = [
    "Content-Type",
    "Content-Encoding",
    "Stripe-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-Shopify-Hmac-Sha256",
    "X-Shopify-Topic",
    "X-Shopify-Event-Id",
    "X-Shopify-Shop-Domain",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-Other",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "application/json; charset=latin-1",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
    ";;;",
]

header_value = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63, max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=40), st.integers(), st.none()),
        "object": st.sampled_from(["event", "list", "order"]),
        "type": st.one_of(st.text(max_size=40), st.integers()),
        "created": st.one_of(st.integers(), st.floats(allow_nan=False), st.text()),
        "timestamp": st.one_of(st.text(max_size=30), st.integers()),
        "updated_at": st.one_of(st.text(max_size=30), st.integers()),
    },
    optional={"data": json_values, "action": st.text(max_size=10)},
)


@dataclass
class Case:
    """One fuzzed request."""

    path: str
    body: bytes
    headers: dict[str, Any]


def _mutate(body: bytes, data: st.DataObject) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if not body:
        return body
    index = data.draw(st.integers(0, len(body) - 1))
    if kind == "flip":
        return body[:index] + bytes([body[index] ^ 0xFF]) + body[index + 1 :]
    if kind == "cut":
        return body[:index]
    junk = data.draw(st.binary(min_size=1, max_size=8))
    return body[:index] + junk + body[index:]


def _body(name: str, data: st.DataObject) -> bytes:
    valid = BY_NAME[name].body if name in BY_NAME else b"{}"
    kind = data.draw(
        st.sampled_from(["bytes", "json", "event", "valid", "mutated", "extended"])
    )
    if kind == "bytes":
        return data.draw(st.binary(max_size=600))
    if kind == "json":
        return json.dumps(data.draw(json_values)).encode()
    if kind == "event":
        return json.dumps(data.draw(event_like)).encode()
    if kind == "valid":
        return valid
    if kind == "mutated":
        return _mutate(valid, data)
    extra = json.dumps(data.draw(json_values))
    return valid.rstrip()[:-1] + b', "fuzz": ' + extra.encode() + b"}"


def _encode(body: bytes, encoding: str) -> tuple[bytes, str | None]:
    if encoding == "gzip":
        return gzip.compress(body), "gzip"
    if encoding == "deflate":
        return zlib.compress(body), "deflate"
    if encoding == "gzip-garbage":
        return b"\x1f\x8b" + body[:40], "gzip"
    if encoding == "br":
        return body, "br"
    return body, None


@st.composite
def cases(draw: Any) -> Case:
    """Draw one request: provider, body, signature, encoding and headers."""
    data = draw(st.data())
    names = [provider.name for provider in PROVIDERS]
    name = draw(st.sampled_from([*names, "nowhere"]))
    body = _body(name, data)
    headers: dict[str, Any] = draw(
        st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=4)
    )
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(CONTENT_TYPES))
    signing = draw(st.sampled_from(["none", "garbage", "valid", "stale"]))
    provider = BY_NAME.get(name, BY_NAME["stripe"])
    if signing == "valid":
        headers.update(provider.sign(body))
    elif signing == "stale":
        headers.update(provider.sign(body, T0 - draw(st.integers(301, 10**6))))
    elif signing == "garbage":
        garbage = provider.sign(draw(st.binary(max_size=20)))
        headers.update({k: v[::-1] for k, v in garbage.items()})
    encoding = draw(
        st.sampled_from(["identity", "gzip", "deflate", "gzip-garbage", "br"])
    )
    body, content_encoding = _encode(body, encoding)
    if content_encoding is not None:
        headers["Content-Encoding"] = content_encoding
    return Case(f"/webhooks/{name}", body, headers)


@dataclass
class Outcome:
    """What one case did: the status and whether a rejection changed the store."""

    status: int
    changed_on_reject: bool


def check_case(app: App, case: Case) -> Outcome:
    """Send one case and compare the store's row counts before and after."""
    before = row_counts(app.store)
    response = app.post(case.path, case.body, case.headers)
    changed = response.status_code != 200 and row_counts(app.store) != before
    return Outcome(response.status_code, changed)


def check_still_serving(app: App) -> tuple[int, int]:
    """Return the statuses of /healthz and of one valid webhook."""
    provider = BY_NAME["stripe"]
    body = provider.body.replace(b"evt_bodies", b"evt_after_fuzz")
    health = app.get("/healthz").status_code
    stored = app.post(provider.path, body, provider.signed(body)).status_code
    return health, stored


def test_fuzz_intake(store: Store) -> None:
    """Random requests get a defined status, and rejections change nothing."""
    with open_app(store) as app:

        @settings(
            max_examples=CI_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases())
        def run(case: Case) -> None:
            outcome = check_case(app, case)
            assert outcome.status in ALLOWED
            assert not outcome.changed_on_reject

        run()
        health, stored = check_still_serving(app)

    assert health == 200
    assert stored == 200
