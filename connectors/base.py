"""The connector interface: what syncd needs from each provider module.

A connector knows one provider's wire formats and nothing else. It verifies
a webhook, turns a webhook body into events, describes the requests that list
the provider's events, and turns each response page into events. Every
operation is pure apart from reading its own settings: the core owns the HTTP
client, retries, transactions, scheduling and storage.

Both streams of one provider must derive the same dedup key for the same
happening, so that a webhook and the polled copy of it are one log entry.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from syncd.config import ProviderConfig


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event as a connector read it, before it is stored.

    ``payload`` is JSON text: the exact webhook body, or the provider's JSON
    for one listed item. ``occurred_at`` is the provider's time, aware UTC.
    ``resource`` names the object the event is about (``customer:cus_9``)
    and ``version`` its version at this event, where the provider has one.
    """

    key: str
    type: str
    occurred_at: datetime
    payload: str
    resource: str | None = None
    version: str | None = None


# Longest values the log's columns take; longer ones are rejected as bad input.
FIELD_LIMITS = {"key": 512, "type": 256, "resource": 512, "version": 128}


def record_problem(record: EventRecord) -> str | None:
    """Return why a record cannot be stored, or None.

    A field may be too long, or contain text that PostgreSQL rejects: a NUL
    character or an unpaired surrogate (from a ``\\u0000`` or ``\\ud800``
    escape in the JSON). Rejecting such a record keeps it from failing the
    whole batch that the writer commits it with.
    """
    if _fits(record):
        return None
    for name, limit in FIELD_LIMITS.items():
        value = getattr(record, name)
        if value is None:
            continue
        if len(value) > limit:
            return (
                f"event {name} {value[:60]!r}... is {len(value)} characters; "
                f"the log keeps at most {limit}"
            )
        problem = _text_problem(value)
        if problem is not None:
            return f"event {name} {value[:60]!r} contains {problem}"
    problem = _text_problem(record.payload)
    if problem is not None:
        return f"event {record.key[:60]!r}: the payload contains {problem}"
    return None


def _fits(record: EventRecord) -> bool:
    """Return True when :func:`record_problem` has nothing to report.

    The usual case, checked with a few calls for the whole record.
    """
    resource, version = record.resource or "", record.version or ""
    if (
        len(record.key) > FIELD_LIMITS["key"]
        or len(record.type) > FIELD_LIMITS["type"]
        or len(resource) > FIELD_LIMITS["resource"]
        or len(version) > FIELD_LIMITS["version"]
    ):
        return False
    text = "".join((record.key, record.type, resource, version, record.payload))
    return _text_problem(text) is None


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "a NUL character, which the log cannot store"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One listing request, stored as cursor progress between pages.

    ``url`` is absolute or relative to the provider's ``api_base_url``.
    """

    url: str
    params: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable form for the cursor table."""
        return {"url": self.url, "params": [list(pair) for pair in self.params]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PageRequest:
        """Rebuild a request stored by :meth:`to_json`."""
        params = tuple((str(name), str(value)) for name, value in data["params"])
        return cls(url=str(data["url"]), params=params)


@dataclass(frozen=True, slots=True)
class Window:
    """The span of provider time a listing run covers, both bounds inclusive.

    ``since`` is None for a listing from the beginning; ``until`` is None for
    a listing up to the newest event (polls), and a fixed time for a
    reconcile window. Connectors whose API takes no upper bound may list past
    ``until``; the extra events are stored like any other.
    """

    since: datetime | None
    until: datetime | None


@dataclass(slots=True)
class Page:
    """The events of one response and the request for the next page, if any.

    A connector for a capped feed (one that returns only its newest N
    entries) sets ``gap_before`` on the last page when the feed ended before
    reaching the window's ``since``: entries older than ``gap_before`` may be
    missing, and the core reconciles that span through
    :meth:`Connector.reconcile_listings`.

    ``rejected`` holds the items of an otherwise good page that the connector
    cannot read, as (item JSON text, reason) pairs. The core stores them in
    the quarantine table and goes on with the listing, so one malformed item
    neither blocks the cursor nor disappears.

    Every built-in connector fills it through
    :func:`connectors.parsing.read_items`.
    """

    records: list[EventRecord]
    next: PageRequest | None
    notes: list[str] = field(default_factory=list)
    gap_before: datetime | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)


class NoOptions(BaseModel):
    """Options model of a connector that takes no keys of its own."""

    model_config = ConfigDict(extra="forbid")


class Connector(ABC):
    """Base class of every provider connector.

    Subclasses set ``name`` (the value of ``connector =`` in the
    configuration), ``default_api_base_url``, and ``Options``: a pydantic
    model of the provider table's own keys, validated with ``extra="forbid"``.
    ``retention`` is how long the provider keeps listable events, when known.
    ``max_page_size`` is the most items the provider's API returns per
    listing request, when it has a fixed maximum. Loading the configuration
    rejects a larger ``page_size``.
    """

    name: ClassVar[str]
    default_api_base_url: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    retention: ClassVar[timedelta | None] = None
    max_page_size: ClassVar[int | None] = None
    # True when the provider's API rejects every request without api_token.
    api_token_required: ClassVar[bool] = False

    def __init__(self, provider: ProviderConfig) -> None:
        self.provider = provider
        self.options: Any = provider.options

    @classmethod
    def check_provider(cls, provider: ProviderConfig) -> list[tuple[str, str]]:
        """Return problems that involve the common keys, as (key, message) pairs.

        Called when the configuration is loaded, after ``Options`` validated
        the connector's own keys, so a check can combine both (a secret whose
        format this provider needs, a base URL it cannot do without). Each
        message says what is wrong and the fix, and never contains a secret.
        """
        return []

    @property
    def api_base_url(self) -> str:
        """Return the configured base URL, or the provider's public API."""
        return self.provider.api_base_url or self.default_api_base_url

    # Webhooks

    @abstractmethod
    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        """Check the request's signature over the raw ``body`` bytes.

        ``headers`` has lower-case names; ``now`` is the current Unix time.
        Raises :class:`~syncd.errors.SignatureError` for a missing or wrong
        signature and :class:`~syncd.errors.TimestampError` for a signed
        timestamp outside the tolerance. Returns None when the request is
        authentic. Compares digests in constant time.
        """

    @abstractmethod
    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        """Turn a verified webhook into events.

        Returns an empty list for requests that carry no event (a ping).
        Raises :class:`~syncd.errors.PayloadError` naming what is wrong.
        """

    # Listings

    def listings(self) -> list[str]:
        """Return the names of the listings this provider is polled through."""
        return ["events"]

    def reconcile_listings(self) -> list[str]:
        """Return the listings a reconcile lists; resource listings, if any.

        A connector whose poll listing is a capped feed returns listings here
        that can cover any window in full.
        """
        return self.listings()

    def auth_headers(self) -> dict[str, str]:
        """Return the headers that authenticate API requests."""
        token = self.provider.api_token
        if token is None:
            return {}
        return {"Authorization": f"Bearer {token.get_secret_value()}"}

    def rate_limit_wait(self, response: httpx.Response) -> float | None:
        """Return seconds to wait before the next request, from provider headers.

        The core already reads ``Retry-After`` and ``X-RateLimit-Remaining`` /
        ``X-RateLimit-Reset``; override this for other schemes. None means no
        wait is needed.
        """
        return None

    @abstractmethod
    def first_request(self, listing: str, window: Window) -> PageRequest:
        """Return the request for the first page of ``listing`` over ``window``."""

    @abstractmethod
    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        """Turn one successful (2xx) response into events and the next request.

        ``Page.next`` is None when the listing is complete. Raises
        :class:`~syncd.errors.ResponseError` for a body that is not the
        listing syncd expects, naming what is missing.
        """


def dump_json(value: Any) -> str:
    """Serialise one JSON value for storage: UTF-8 text, integers exact.

    Raises ValueError for NaN or an infinite number (a literal such as
    ``1e400``), which JSON cannot express. Strings with unpaired surrogates
    are written with ``\\u`` escapes, so the text stays valid UTF-8.
    NOTE: a float with more significant digits than a double stores is
    written rounded.
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    return text


# Maximum nesting depth of arrays and objects in a webhook body. Python's
# parser raises RecursionError near 1000 levels, depending on the stack.
MAX_JSON_DEPTH = 200


class _DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateKeyError(f"duplicate key {name[:60]!r} in one object")
            seen.add(name)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """Parse a JSON number with a fraction or exponent; raise ValueError if infinite.

    ``json`` turns a literal such as ``1e999`` into infinity, which JSON
    cannot write back: a reader of the log would get ``Infinity``.
    """
    value = float(text)
    if math.isinf(value):
        raise ValueError(
            f"number {text[:40]} is beyond the range of a 64-bit float, so "
            "send it as a string instead"
        )
    return value


def json_depth(value: Any) -> int:
    """Return how deeply arrays and objects nest in ``value`` (a scalar is 0)."""
    depth = 0
    level = [value]
    while True:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            return depth
        depth += 1
        level = []
        for container in containers:
            level.extend(
                container.values() if isinstance(container, dict) else container
            )


def parse_json_body(body: bytes) -> tuple[str, Any]:
    """Return a webhook body as text and as JSON; raise PayloadError if invalid.

    The body must be UTF-8 JSON without duplicate object keys (other parsers
    would pick the other value) or ``NaN``/``Infinity``, and nested at most
    MAX_JSON_DEPTH levels. Integers of any size are kept exact.
    """
    from syncd.errors import PayloadError

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(
            f"body is not valid UTF-8 (byte 0x{body[exc.start]:02x} at offset "
            f"{exc.start}); send UTF-8 JSON"
        ) from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
            parse_float=finite_float,
        )
    except RecursionError:
        raise PayloadError(
            f"body is JSON nested deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    # ValueError also covers integers over Python's 4300-digit limit.
    except ValueError as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    # Each level opens with a bracket, so a body with few brackets needs no walk.
    brackets = text.count("{") + text.count("[")
    if brackets > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise PayloadError(f"body is JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return text, value
