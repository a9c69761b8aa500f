"""Exceptions raised by syncd, grouped by what the caller should do.

::

    SyncdError
    ├── ConfigError              fix the configuration; the daemon exits 78
    ├── ListenError              the webhook address is in use: exit 1
    ├── ProviderError            a provider API call failed
    │   ├── RetriableError       timeouts, 5xx, 429: retry with backoff
    │   ├── RateLimitedError     held longer than max_retry_wait: end the run
    │   ├── AuthenticationError  401/403 from the provider: fix the token
    │   ├── ResponseError        a response syncd cannot read: the run fails
    │   └── StoppingError        syncd is stopping: the run ends, not an error
    ├── WebhookError             one webhook request is rejected
    │   ├── SignatureError       missing or invalid signature (HTTP 401)
    │   │   └── TimestampError   signed timestamp outside the tolerance (401)
    │   └── PayloadError         a body the connector cannot parse (HTTP 400)
    └── StoreUnavailableError    the database cannot commit (HTTP 503)

Foreign exceptions (httpx, SQLAlchemy) are translated at the boundary and
chained with ``from``.
"""

from __future__ import annotations

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h


class SyncdError(Exception):
    """Base class of every error syncd raises on purpose."""


class ConfigError(SyncdError):
    """The configuration is invalid; ``problems`` lists every finding."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ListenError(SyncdError):
    """The webhook server cannot listen on its configured address."""


class ProviderError(SyncdError):
    """A call to a provider's API failed."""


class RetriableError(ProviderError):
    """A transient failure; ``retry_after`` is the server's wait in seconds.

    ``rate_limited`` marks a rate limit that named no wait, which is waited
    out with a longer backoff than other failures.
    """

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        *,
        rate_limited: bool = False,
    ) -> None:
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        super().__init__(message)


class RateLimitedError(ProviderError):
    """The credential's rate limit delays requests longer than a run may wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class AuthenticationError(ProviderError):
    """The provider rejected the API credentials."""


class ResponseError(ProviderError):
    """The provider returned a response syncd cannot read."""


class StoppingError(ProviderError):
    """syncd is stopping, so a run ends before it is done.

    The run is recorded as stopped, not failed. It subclasses ProviderError
    so that code that ends a run on any ProviderError also ends it on a stop.
    """

    MESSAGE = "syncd is stopping; the next start continues from the cursor"


class WebhookError(SyncdError):
    """One webhook request is rejected; ``status`` is the HTTP answer."""

    status = 400


class SignatureError(WebhookError):
    """The signature is missing or does not match the body."""

    status = 401


class TimestampError(SignatureError):
    """The signed timestamp is outside the provider's tolerance."""


class PayloadError(WebhookError):
    """The body cannot be parsed into events."""

    status = 400


class StoreUnavailableError(SyncdError):
    """The database could not be reached or could not commit."""
