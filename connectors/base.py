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
    """Return why a record cannot be stored (a field too long), or None."""
    for name, limit in FIELD_LIMITS.items():
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            return (
                f"event {name} {value[:60]!r}... is {len(value)} characters; "
                f"the log keeps at most {limit}"
            )
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
    """

    records: list[EventRecord]
    next: PageRequest | None
    notes: list[str] = field(default_factory=list)
    gap_before: datetime | None = None


class NoOptions(BaseModel):
    """Options model of a connector that takes no keys of its own."""

    model_config = ConfigDict(extra="forbid")


class Connector(ABC):
    """Base class of every provider connector.

    Subclasses set ``name`` (the value of ``connector =`` in the
    configuration), ``default_api_base_url``, and ``Options``: a pydantic
    model of the provider table's own keys, validated with ``extra="forbid"``.
    ``retention`` is how long the provider keeps listable events, when known.
    """

    name: ClassVar[str]
    default_api_base_url: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    retention: ClassVar[timedelta | None] = None

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
    """Serialise one JSON value for storage: UTF-8 text, integers exact."""
    return json.dumps(value, ensure_ascii=False)
