"""Request pacing: rate-limit budgets and server-set poll intervals."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable

import httpx

from connectors.base import Connector

log = logging.getLogger(__name__)

# Wait after a rate-limit answer that says nothing about when to come back.
DEFAULT_RATE_LIMIT_WAIT = 60.0
# The maximum server-set wait honoured, in seconds (30 days). A longer one,
# infinity included, is cut to it.
MAX_SERVER_WAIT = 30 * 86400.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)\s*(?:,|$)", re.I)


class RateBudget:
    """The request allowance of one credential, shared by every listing using it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.blocked_until = 0.0
        self.reason = ""
        self._lock = threading.Lock()

    def block_for(self, seconds: float, reason: str) -> None:
        """Hold every request of this credential for ``seconds`` from now."""
        with self._lock:
            until = self.clock() + seconds
            if until > self.blocked_until:
                self.blocked_until, self.reason = until, reason

    def wait_time(self) -> float:
        """Return how long the next request must wait, in seconds."""
        with self._lock:
            return max(0.0, self.blocked_until - self.clock())


class RateBudgets:
    """One RateBudget per (API origin, credential), created on first use."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._budgets: dict[tuple[str, str], RateBudget] = {}
        self._lock = threading.Lock()

    def for_connector(self, connector: Connector) -> RateBudget:
        token = connector.provider.api_token
        secret = token.get_secret_value() if token is not None else ""
        fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:16]
        key = (connector.api_base_url, fingerprint)
        with self._lock:
            if key not in self._budgets:
                self._budgets[key] = RateBudget(self.clock)
            return self._budgets[key]


def header_rate_limit_wait(response: httpx.Response, now: float) -> float | None:
    """Return the wait that ``X-RateLimit-Remaining: 0`` with its reset asks for."""
    remaining = response.headers.get("x-ratelimit-remaining")
    if remaining is None or remaining.strip() != "0":
        return None
    reset = response.headers.get("x-ratelimit-reset", "")
    try:
        wait = float(reset) - now
    except ValueError:
        return DEFAULT_RATE_LIMIT_WAIT
    if math.isnan(wait):
        return DEFAULT_RATE_LIMIT_WAIT
    return min(max(0.0, wait), MAX_SERVER_WAIT)


def is_rate_limited(response: httpx.Response) -> bool:
    """Tell whether a 403 is a (primary or secondary) rate limit, not a denial."""
    headers = response.headers
    if headers.get("x-ratelimit-remaining", "").strip() == "0":
        return True
    if "retry-after" in headers:
        return True
    return "rate limit" in response.text[:2000].lower()


def server_poll_interval(response: httpx.Response) -> tuple[float | None, str | None]:
    """Return the poll interval a response asks for, and a problem if unreadable.

    ``X-Poll-Interval`` (seconds) wins over ``Cache-Control: max-age``. An
    unreadable value is reported, never read as zero.
    """
    value = response.headers.get("x-poll-interval")
    if value is not None:
        if value.strip().isdigit():
            return float(value), None
        return None, f"unreadable X-Poll-Interval {value[:40]!r}"
    cache_control = response.headers.get("cache-control")
    if cache_control:
        match = _MAX_AGE.search(cache_control)
        if match:
            return float(match.group(1)), None
    return None, None
