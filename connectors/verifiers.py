"""Webhook signature verifiers that a connector builds from its configuration.

Each verifier checks one request with ``verify(headers, body, now)``: it
raises SignatureError for a missing or wrong signature and TimestampError for
a signed timestamp outside the tolerance, and returns None for an authentic
request. ``headers`` has lower-case names and ``now`` is Unix time in seconds.
Every digest is compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Mapping
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from connectors.signing import hmac_sha256, matches_any
from syncd.errors import SignatureError, TimestampError

STANDARD_SECRET_PREFIX = "whsec_"
# A signed timestamp is the time of sending, so one this far from the clock is
# in other units (milliseconds are 1000 times larger) or one of the two clocks
# is wrong.
MAX_PLAUSIBLE_YEARS = 10
MAX_PLAUSIBLE_OFFSET = MAX_PLAUSIBLE_YEARS * 365 * 86_400  # seconds
_UNIX_TIME = re.compile(r"[0-9]{1,12}")
_PLACEHOLDERS = ("{timestamp}", "{body}")
_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}

Algorithm = Literal["sha1", "sha256", "sha512"]
DigestEncoding = Literal["hex", "base64"]
SecretEncoding = Literal["text", "hex", "base64"]


class Verifier(Protocol):
    """Anything that checks a webhook request's signature."""

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Raise SignatureError or TimestampError unless the request is authentic."""


class VerifiedWebhooks:
    """Connector mixin: ``verify_webhook`` checks requests with ``verifier``.

    List it before ``Connector`` in the bases, so that its method replaces the
    abstract one. ``verifier`` is None when the provider has no
    ``webhook_secret``, and then every webhook is rejected.
    """

    verifier: Verifier | None = None

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        """Raise SignatureError or TimestampError unless the request is authentic."""
        if self.verifier is None:
            raise SignatureError("webhooks are off for this provider")
        self.verifier.verify(headers, body, now)


class StandardWebhooksVerifier:
    """Standard Webhooks v1: HMAC-SHA256 over ``webhook-id.webhook-timestamp.body``.

    The secret is ``whsec_`` followed by the base64 of the key. A secret
    without the prefix is read as the base64 alone, as the reference
    libraries do. ``tolerance`` is in seconds.
    """

    def __init__(self, secret: str, tolerance: float) -> None:
        self._key = decode_standard_secret(secret)
        self.tolerance = tolerance

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        message_id = required_header(headers, "webhook-id")
        timestamp_text = required_header(headers, "webhook-timestamp")
        timestamp = parse_unix_time(timestamp_text, "webhook-timestamp")
        signatures = v1_signatures(required_header(headers, "webhook-signature"))

        signed = f"{message_id}.{timestamp_text}.".encode() + body
        expected = base64.b64encode(hmac_sha256(self._key, signed)).decode()
        if not matches_any(expected, signatures):
            raise SignatureError(
                "no v1 signature in the webhook-signature header matches the body; "
                "check that webhook_secret is this endpoint's signing secret"
            )
        check_tolerance(timestamp, now, self.tolerance)


class HmacVerifier:
    """An HMAC of the body, or of a template around it, sent in one header.

    ``signed_content`` contains ``{body}`` once and may contain
    ``{timestamp}``, the text of ``timestamp_header``. The header value is
    ``prefix`` followed by the digest in ``encoding``.
    """

    def __init__(
        self,
        key: bytes,
        tolerance: float,
        *,
        header: str,
        algorithm: Algorithm = "sha256",
        encoding: DigestEncoding = "hex",
        prefix: str = "",
        timestamp_header: str | None = None,
        signed_content: str = "{body}",
    ) -> None:
        self._key = key
        self.tolerance = tolerance
        self.header = header.lower()
        self.algorithm = algorithm
        self.encoding = encoding
        self.prefix = prefix
        self.timestamp_header = timestamp_header.lower() if timestamp_header else None
        self.signed_content = signed_content

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> None:
        received = self._received_digest(required_header(headers, self.header))
        timestamp_text = ""
        if self.timestamp_header is not None:
            timestamp_text = required_header(headers, self.timestamp_header)
            parse_unix_time(timestamp_text, self.timestamp_header)

        expected = self._digest(self._signed_message(timestamp_text, body))
        if not matches_any(expected, [received]):
            raise SignatureError(
                f"the {self.header} header does not match the body; check that "
                "webhook_secret and the webhook algorithm, encoding and prefix "
                "are the ones the provider uses"
            )
        if self.timestamp_header is not None:
            check_tolerance(int(timestamp_text), now, self.tolerance)

    def _received_digest(self, value: str) -> str:
        if not value.startswith(self.prefix):
            raise SignatureError(
                f"the {self.header} header does not start with {self.prefix!r}"
            )
        digest = value[len(self.prefix) :].strip()
        return digest.lower() if self.encoding == "hex" else digest

    def _signed_message(self, timestamp_text: str, body: bytes) -> bytes:
        before, after = self.signed_content.split("{body}")
        before = before.replace("{timestamp}", timestamp_text)
        after = after.replace("{timestamp}", timestamp_text)
        return before.encode() + body + after.encode()

    def _digest(self, message: bytes) -> str:
        digest = hmac.new(self._key, message, _ALGORITHMS[self.algorithm]).digest()
        if self.encoding == "hex":
            return digest.hex()
        return base64.b64encode(digest).decode()


class WebhookOptions(BaseModel):
    """The ``webhook`` table: which signature scheme a provider's webhooks use."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["standard-webhooks", "hmac"]
    header: str | None = Field(default=None, validate_default=True)
    algorithm: Algorithm | None = None
    encoding: DigestEncoding | None = None
    prefix: str | None = None
    timestamp_header: str | None = None
    signed_content: str | None = None
    secret_encoding: SecretEncoding | None = None

    @field_validator("header")
    @classmethod
    def _check_header(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == "hmac" and not value:
            raise ValueError(
                "required when kind = 'hmac'; name the header that carries the "
                "signature, e.g. 'X-Hub-Signature-256'"
            )
        return _only_for_hmac(value, info)

    @field_validator(
        "algorithm", "encoding", "prefix", "timestamp_header", "secret_encoding"
    )
    @classmethod
    def _check_hmac_only(cls, value: object, info: ValidationInfo) -> object:
        return _only_for_hmac(value, info)

    @field_validator("signed_content")
    @classmethod
    def _check_signed_content(
        cls, value: str | None, info: ValidationInfo
    ) -> str | None:
        _only_for_hmac(value, info)
        if value is None:
            return value
        if value.count("{body}") != 1:
            raise ValueError(f"{value!r} must contain {{body}} exactly once")
        rest = value
        for placeholder in _PLACEHOLDERS:
            rest = rest.replace(placeholder, "")
        if "{" in rest or "}" in rest:
            raise ValueError(
                f"{value!r} has an unknown placeholder; the only ones are "
                "{timestamp} and {body}"
            )
        if "{timestamp}" in value and not info.data.get("timestamp_header"):
            raise ValueError(
                "uses {timestamp}, so set timestamp_header to the header "
                "that carries it"
            )
        return value

    def build(self, secret: str, tolerance: float) -> Verifier:
        """Return the verifier of this scheme; raise ValueError for a bad secret."""
        if self.kind == "standard-webhooks":
            return StandardWebhooksVerifier(secret, tolerance)
        assert self.header is not None
        return HmacVerifier(
            decode_secret(secret, self.secret_encoding or "text"),
            tolerance,
            header=self.header,
            algorithm=self.algorithm or "sha256",
            encoding=self.encoding or "hex",
            prefix=self.prefix or "",
            timestamp_header=self.timestamp_header,
            signed_content=self.signed_content or self._default_content(),
        )

    def _default_content(self) -> str:
        if self.timestamp_header:
            return "{timestamp}.{body}"
        return "{body}"


def _only_for_hmac(value: object, info: ValidationInfo) -> object:
    if value is not None and info.data.get("kind") == "standard-webhooks":
        raise ValueError(
            "applies only to kind = 'hmac'; Standard Webhooks fixes the "
            "headers, algorithm and encoding, so remove it"
        )
    return value


def decode_standard_secret(secret: str) -> bytes:
    """Return the HMAC key of a ``whsec_…`` secret; raise ValueError if invalid.

    The message never contains the secret.
    """
    encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "invalid Standard Webhooks secret: the text after 'whsec_' is not "
            "valid base64; copy the signing secret exactly as the provider "
            "shows it"
        ) from None
    if not key:
        raise ValueError("invalid Standard Webhooks secret: the key is empty")
    return key


def decode_secret(secret: str, encoding: SecretEncoding) -> bytes:
    """Return the HMAC key of a secret written as text, hex or base64."""
    if encoding == "text":
        return secret.encode()
    try:
        if encoding == "hex":
            return bytes.fromhex(secret)
        return base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"the secret is not valid {encoding}; check it, or set "
            "webhook.secret_encoding to how the provider writes it"
        ) from None


def required_header(headers: Mapping[str, str], name: str) -> str:
    """Return a header's value; raise SignatureError if it is missing or empty."""
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def parse_unix_time(text: str, header: str) -> int:
    """Return a header's Unix time in seconds; raise SignatureError if invalid."""
    if not _UNIX_TIME.fullmatch(text):
        raise SignatureError(
            f"invalid {header} header {text[:20]!r}: expected Unix time in seconds"
        )
    return int(text)


def v1_signatures(value: str) -> list[str]:
    """Return the base64 part of every ``v1,…`` entry of a webhook-signature."""
    signatures = []
    for entry in value.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and signature:
            signatures.append(signature)
    if not signatures:
        raise SignatureError("the webhook-signature header has no v1 signature")
    return signatures


def check_tolerance(timestamp: int, now: float, tolerance: float) -> None:
    """Raise TimestampError when ``timestamp`` is more than ``tolerance`` from now."""
    # Compare whole seconds as integers first, because a timestamp of hundreds
    # of digits does not convert to a float.
    offset = abs(timestamp - math.floor(now))
    if offset > max(tolerance, MAX_PLAUSIBLE_OFFSET):
        raise TimestampError(
            f"signed timestamp {_shorten_number(timestamp)} is more than "
            f"{MAX_PLAUSIBLE_YEARS} years from this host's clock, so it is not a "
            "plausible Unix time in seconds. Check that the sender signs with "
            "Unix time in seconds (not milliseconds) and that this host's clock "
            "is right"
        )
    if abs(now - timestamp) <= tolerance:
        return
    direction = "behind" if timestamp < now else "ahead of"
    raise TimestampError(
        f"signed timestamp {timestamp} is {abs(now - timestamp):.0f}s {direction} "
        f"this host's clock, outside the {tolerance:.0f}s tolerance; a replay, "
        "or this host's clock is skewed"
    )


def _shorten_number(number: int) -> str:
    """Return ``number`` as text, cut to 20 characters with its digit count."""
    text = str(number)
    digits = len(text.lstrip("-"))
    if len(text) <= 20:
        return text
    return f"{text[:20]}... ({digits} digits)"
