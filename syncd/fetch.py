"""Provider API requests with bounded retries.

Timeouts, connection errors, 5xx and 429 are retried with exponential
backoff and full jitter, waiting at least what ``Retry-After`` asks for;
401 and 403 raise AuthenticationError at once, other 4xx ResponseError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

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
from syncd.errors import AuthenticationError, ResponseError, RetriableError

log = logging.getLogger(__name__)


class Fetcher:
    """Sends a connector's page requests and returns successful responses."""

    def __init__(
        self,
        connector: Connector,
        client: httpx.Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.connector = connector
        self.client = client
        self.sleep = sleep
        self.requests = 0
        settings = connector.provider
        self._wait_cap = settings.max_retry_wait.total_seconds()
        self._backoff = wait_exponential_jitter(initial=1, max=self._wait_cap)
        self._retrying = Retrying(
            stop=stop_after_attempt(settings.max_attempts)
            | stop_after_delay(self._wait_cap * settings.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(RetriableError),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def fetch(self, request: PageRequest) -> httpx.Response:
        """Send ``request``, retrying transient failures; raise ProviderError."""
        return self._retrying(self._fetch_once, request)

    def url_of(self, request: PageRequest) -> str:
        """Return the absolute URL of a request, without its query."""
        return urljoin(self.connector.api_base_url + "/", request.url.lstrip("/"))

    def _fetch_once(self, request: PageRequest) -> httpx.Response:
        url = self.url_of(request)
        self.requests += 1
        try:
            response = self.client.get(
                url,
                params=list(request.params),
                headers=self.connector.auth_headers(),
                timeout=self.connector.provider.request_timeout.total_seconds(),
            )
        except httpx.TimeoutException as exc:
            raise RetriableError(f"GET {url} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise RetriableError(f"GET {url} failed: {exc!r}") from exc
        _raise_for_status(url, response)
        return response

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        error = state.outcome.exception() if state.outcome else None
        server_wait = getattr(error, "retry_after", None) or 0.0
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


def _raise_for_status(url: str, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429 or status >= 500:
        raise RetriableError(
            f"GET {url} answered {status}", retry_after=retry_after(response)
        )
    if status in (401, 403):
        raise AuthenticationError(
            f"GET {url} answered {status}: the provider rejected api_token; "
            "check the token and its permissions"
        )
    raise ResponseError(f"GET {url} answered {status}: {_snippet(response)}")


def retry_after(response: httpx.Response) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds, if readable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        log.warning("ignoring unreadable Retry-After header %r", value[:40])
        return None
    return max(0.0, moment.timestamp() - time.time())


def _snippet(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:200] or "(empty body)"
