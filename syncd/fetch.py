"""Provider API requests with bounded retries and a shared rate budget.

Timeouts, connection errors, 5xx, 429 and rate-limit 403s are retried with
exponential backoff and full jitter, waiting at least what ``Retry-After``
asks for (or a safe default when a rate limit names no time). Other 401 and
403 answers raise AuthenticationError at once, other 4xx ResponseError.
``X-RateLimit-Remaining: 0`` holds every request of that credential until
its reset; a hold longer than ``max_retry_wait`` ends the run with
RateLimitedError instead of blocking it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from connectors.base import Connector, PageRequest
from syncd.errors import (
    AuthenticationError,
    RateLimitedError,
    ResponseError,
    RetriableError,
    StoppingError,
)
from syncd.pacing import (
    DEFAULT_RATE_LIMIT_WAIT,
    MAX_SERVER_WAIT,
    RateBudget,
    header_rate_limit_wait,
    is_rate_limited,
)
from syncd.rate_limit_state import blocked_state, read_rate_limit_headers

log = logging.getLogger(__name__)


class Fetcher:
    """Sends a connector's page requests and returns successful responses."""

    def __init__(
        self,
        connector: Connector,
        client: httpx.Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        budget: RateBudget | None = None,
        on_wait: Callable[[dict[str, Any]], None] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.connector = connector
        self.client = client
        self.sleep = sleep
        self.clock = clock
        # Called with the rate-limit state before each rate-limit wait, so
        # that ``syncd status`` can show a wait while a run sleeps.
        self.on_wait = on_wait
        # True once syncd is stopping: no further page is requested.
        self.stopping = stopping
        self._wait_ends_at = 0.0  # when the last announced wait ends
        self._wait_state: dict[str, Any] = {}
        self.budget = budget or RateBudget(clock)
        self.requests = 0
        self.rate_limit_waits = 0
        self.rate_limit_wait_seconds = 0.0
        self.rate_limit_seen: dict[str, Any] = {}
        settings = connector.provider
        self._wait_cap = settings.max_retry_wait.total_seconds()
        self._backoff = wait_exponential_jitter(initial=1, max=self._wait_cap)
        # Each attempt may take its request timeout and then a wait. The time
        # limit then ends only a run whose responses trickle in past it,
        # because httpx times each read, not a whole response.
        attempt_seconds = self._wait_cap + settings.request_timeout.total_seconds()
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts)
            | stop_after_delay(attempt_seconds * settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(RetriableError),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def fetch(
        self, request: PageRequest, validators: dict[str, str] | None = None
    ) -> httpx.Response:
        """Send ``request``, retrying transient failures; raise ProviderError.

        With ``validators`` (``etag``, ``last_modified``) the request is
        conditional, and a 304 answer is returned like a success. Raises
        StoppingError, without a request, once syncd is stopping.
        """
        if self.stopping():
            raise StoppingError(StoppingError.MESSAGE)
        return self._retrying(self._fetch_once, request, validators or {})

    def rate_limit_state(self) -> dict[str, Any]:
        """Return the rate-limit headers last seen and any wait of the budget.

        The form is the one ``syncd.rate_limit_state`` saves for
        ``syncd status``. It is {} when there is nothing to show.
        """
        now = self.clock()
        blocked = blocked_state(self.budget.wait_time(), self.budget.reason, now)
        if not blocked and self._wait_ends_at > now:
            # A retry wait of the fetch running now, which the budget lacks.
            blocked = self._wait_state
        return {**self.rate_limit_seen, **blocked}

    def url_of(self, request: PageRequest) -> str:
        """Return the absolute URL of a request, without its query.

        Raises ResponseError for a URL on another origin than ``api_base_url``
        (a ``next`` link elsewhere), so the API token is never sent there.
        """
        base = self.connector.api_base_url
        url = urljoin(base + "/", request.url.lstrip("/"))
        if _origin(url) != _origin(base):
            raise ResponseError(
                f"next page URL {_origin(url)} is not on api_base_url {base}; "
                "refusing to send the API token there"
            )
        return url

    def _fetch_once(
        self, request: PageRequest, validators: dict[str, str]
    ) -> httpx.Response:
        url = self.url_of(request)
        self._wait_for_budget()
        headers = dict(self.connector.auth_headers())
        if validators.get("etag"):
            headers["If-None-Match"] = validators["etag"]
        if validators.get("last_modified"):
            headers["If-Modified-Since"] = validators["last_modified"]
        self.requests += 1
        # httpx replaces a URL's query with ``params``, so a next link's own
        # query is merged in first.
        parsed = httpx.URL(url)
        params = [*parsed.params.multi_items(), *request.params]
        try:
            response = self.client.get(
                parsed.copy_with(query=None),
                params=params,
                headers=headers,
                timeout=self.connector.provider.request_timeout.total_seconds(),
            )
        except httpx.TimeoutException as exc:
            raise RetriableError(f"GET {url} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise RetriableError(f"GET {url} failed: {exc!r}") from exc
        self._note_rate_limit(response)
        if response.status_code == 304 and validators:
            return response
        requested_wait = None
        if response.status_code >= 400:
            requested_wait = retry_after(response, url)
        self._check_long_retry_after(url, response, requested_wait)
        _raise_for_status(url, response, self.clock(), requested_wait)
        return response

    def _check_long_retry_after(
        self, url: str, response: httpx.Response, requested_wait: float | None
    ) -> None:
        """End the run when the server asks for a wait longer than a run may take.

        Retrying sooner than ``Retry-After`` asks would be ignored or
        penalised, so the wait is kept in the credential's budget instead and
        the next run continues from the same cursor.
        """
        if requested_wait is None or requested_wait <= self._wait_cap:
            return
        self.budget.block_for(requested_wait, f"Retry-After {requested_wait:.0f}s")
        raise RateLimitedError(
            f"GET {url} returned {response.status_code} with Retry-After "
            f"{requested_wait:.0f}s, longer than max_retry_wait; the next run "
            "continues from the same cursor",
            retry_after=requested_wait,
        )

    def _wait_for_budget(self) -> None:
        wait = self.budget.wait_time()
        if wait <= 0:
            return
        self.rate_limit_waits += 1
        if wait > self._wait_cap:
            raise RateLimitedError(
                f"rate limited until {_utc_text(self.clock() + wait)} "
                f"({self.budget.reason}); "
                "the next run continues from the same cursor",
                retry_after=wait,
            )
        log.warning(
            "%s: rate limited (%s); waiting %.1fs",
            self.connector.provider.name,
            self.budget.reason,
            wait,
        )
        self.rate_limit_wait_seconds += wait
        self._announce_wait(wait, self.budget.reason)
        self.sleep(wait)

    def _note_rate_limit(self, response: httpx.Response) -> None:
        seen = read_rate_limit_headers(response, self.clock())
        if seen:
            self.rate_limit_seen = seen
        wait = header_rate_limit_wait(response, self.clock())
        reason = "X-RateLimit-Remaining is 0"
        custom = self.connector.rate_limit_wait(response)
        if custom is not None and (wait is None or custom > wait):
            wait, reason = custom, "the provider's rate-limit header"
        if wait:
            self.budget.block_for(wait, reason)

    def _wait(self, state: RetryCallState) -> float:
        """Return the wait before the next attempt, at most ``max_retry_wait``.

        A rate limit that named no wait is waited out for 60 s, then twice as
        long after each further one.
        """
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        server_wait = getattr(error, "retry_after", None) or 0.0
        if getattr(error, "rate_limited", False):
            doublings = min(state.attempt_number - 1, 20)
            server_wait = DEFAULT_RATE_LIMIT_WAIT * 2**doublings
        return min(max(backoff, server_wait), self._wait_cap)

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: attempt %d failed (%s); retrying in %.1fs",
            self.connector.provider.name,
            state.attempt_number,
            error,
            wait,
        )
        if getattr(error, "retry_after", None):
            self._announce_wait(wait, "the provider's Retry-After")
        elif getattr(error, "rate_limited", False):
            self._announce_wait(wait, "a rate limit that named no wait")

    def _announce_wait(self, seconds: float, reason: str) -> None:
        now = self.clock()
        self._wait_ends_at = now + seconds
        self._wait_state = blocked_state(seconds, reason, now)
        if self.on_wait is not None:
            self.on_wait({**self.rate_limit_seen, **self._wait_state})


def _raise_for_status(
    url: str, response: httpx.Response, now: float, requested_wait: float | None
) -> None:
    """Raise the error for a status other than 2xx.

    ``requested_wait`` is the response's Retry-After in seconds, or None.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    if status >= 500:
        raise RetriableError(f"GET {url} returned {status}", retry_after=requested_wait)
    if status == 429 or (status == 403 and is_rate_limited(response)):
        wait = requested_wait or header_rate_limit_wait(response, now)
        raise RetriableError(
            f"GET {url} returned {status} (rate limited)",
            retry_after=wait,
            rate_limited=not wait,
        )
    if status in (401, 403):
        raise AuthenticationError(
            f"GET {url} returned {status}: the provider rejected api_token; "
            "check the token and its permissions"
        )
    raise ResponseError(f"GET {url} returned {status}: {_snippet(response)}")


def retry_after(response: httpx.Response, url: str | None = None) -> float | None:
    """Return the wait that a ``Retry-After`` header requests, in seconds.

    An unreadable or negative value is logged, naming ``url`` when given, and
    ignored. A wait beyond MAX_SERVER_WAIT, infinity included, is cut to it.
    """
    value = response.headers.get("retry-after")
    if value is None:
        return None
    seconds = _retry_after_seconds(value)
    if seconds is None:
        log.warning(
            "%signoring unreadable Retry-After header %r; waiting as if none was sent",
            f"GET {url}: " if url else "",
            value[:40],
        )
        return None
    return min(seconds, MAX_SERVER_WAIT)


def _retry_after_seconds(value: str) -> float | None:
    """Read delay seconds or an HTTP date; None for anything else or a negative."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.timestamp() - time.time())
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200] or "(empty body)"


def _utc_text(moment: float) -> str:
    """Format a Unix time to the second, so that one wait reads the same each run."""
    return datetime.fromtimestamp(round(moment), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
