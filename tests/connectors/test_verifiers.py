"""Tests of the webhook verifiers: Standard Webhooks vectors and configurable HMAC."""

from __future__ import annotations

import base64
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.verifiers import (
    HmacVerifier,
    StandardWebhooksVerifier,
    WebhookOptions,
    decode_standard_secret,
)
from syncd.errors import SignatureError, TimestampError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "standard-webhooks"
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text("utf-8"))
VALID = [v for v in VECTORS["vectors"] if v["expected"] == "valid"]
INVALID = [v for v in VECTORS["vectors"] if v["expected"] == "invalid"]
STALE_IDS = {"stdwh-old-timestamp", "stdwh-future-timestamp"}

T0 = 1714557600  # 2024-05-01T10:00:00Z
EXAMPLE_SECRET = "whsec_dGVzdHNlY3JldDEyMzQ1Njc4OTA="
EXAMPLE_BODY = b'{"type":"order.created","id":"ord_1"}'
EXAMPLE_SIGNATURE = "v1,c7+uR+VnNXN7KlfhlnIBnMOD5oOVo8BURimdJE8O0zI="
EXAMPLE_HEADERS = {
    "webhook-id": "msg_2Lf0Test",
    "webhook-timestamp": str(T0),
    "webhook-signature": EXAMPLE_SIGNATURE,
}

SHOPIFY_SECRET = "shpss_test_secret"
SHOPIFY_BODY = b'{"id":820982911946154508,"email":"jon@example.com"}'
SHOPIFY_DIGEST = "LnwdZPLBbdjkBwPD/lDL1/rYEGby/GHPtL1aAH6Dxjc="
HMAC_SECRET = "hmac-test-secret"
HMAC_BODY = b'{"event":"ticket.closed","id":7}'


def vector_case(vector: dict[str, Any]) -> Any:
    return pytest.param(vector, id=vector["id"])


def verify_vector(vector: dict[str, Any]) -> None:
    verifier = StandardWebhooksVerifier(
        vector["secret"], vector["verify"]["tolerance_s"]
    )
    body = vector["body"].encode()
    verifier.verify(vector["headers"], body, vector["verify"]["now"])


def hmac_digest(message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(HMAC_SECRET.encode(), message, algorithm).digest()


def hmac_verifier(**settings: Any) -> HmacVerifier:
    settings.setdefault("header", "X-Signature")
    return HmacVerifier(HMAC_SECRET.encode(), 300, **settings)


@pytest.mark.parametrize("vector", [vector_case(v) for v in VALID])
def test_standard_vector_valid(vector: dict[str, Any]) -> None:
    """Each valid Standard Webhooks vector verifies."""
    verify_vector(vector)


@pytest.mark.parametrize("vector", [vector_case(v) for v in INVALID])
def test_standard_vector_invalid(vector: dict[str, Any]) -> None:
    """Each invalid Standard Webhooks vector raises SignatureError."""
    with pytest.raises(SignatureError) as caught:
        verify_vector(vector)
    stale = vector["id"] in STALE_IDS
    assert isinstance(caught.value, TimestampError) is stale


@pytest.mark.parametrize(
    "vector", [vector_case(v) for v in INVALID if v["id"] in STALE_IDS]
)
def test_standard_stale_message(vector: dict[str, Any]) -> None:
    """A stale timestamp's error message states it is outside the tolerance."""
    with pytest.raises(TimestampError, match=r"outside the \d+s tolerance"):
        verify_vector(vector)


def test_standard_example_verifies() -> None:
    """The example secret, headers and body verify."""
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    assert verifier.verify(EXAMPLE_HEADERS, EXAMPLE_BODY, T0) is None


def test_standard_example_changed_body() -> None:
    """One changed byte of the example body is rejected as a bad signature."""
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    body = EXAMPLE_BODY.replace(b"ord_1", b"ord_2")
    with pytest.raises(SignatureError, match="no v1 signature"):
        verifier.verify(EXAMPLE_HEADERS, body, T0)


def test_standard_one_of_many_matches() -> None:
    """A header with decoys and one matching v1 signature verifies."""
    decoys = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= v1a,bm90LWEtbWFj"
    headers = dict(
        EXAMPLE_HEADERS, **{"webhook-signature": f"{decoys} {EXAMPLE_SIGNATURE}"}
    )
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    assert verifier.verify(headers, EXAMPLE_BODY, T0) is None


def test_standard_no_v1_entry() -> None:
    """A header with only other versions is rejected for lacking a v1 entry."""
    headers = dict(EXAMPLE_HEADERS, **{"webhook-signature": "v2,c7+uR+VnNXN7KlfhlnI="})
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    with pytest.raises(SignatureError, match="no v1 signature"):
        verifier.verify(headers, EXAMPLE_BODY, T0)


@pytest.mark.parametrize("offset", [-300, -299, 299, 300])
def test_standard_tolerance_inside(offset: int) -> None:
    """Timestamps up to the tolerance away from the clock are accepted."""
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    assert verifier.verify(EXAMPLE_HEADERS, EXAMPLE_BODY, T0 - offset) is None


@pytest.mark.parametrize("offset", [-301, 301])
def test_standard_tolerance_outside(offset: int) -> None:
    """Timestamps 301 s away with a 300 s tolerance raise TimestampError."""
    verifier = StandardWebhooksVerifier(EXAMPLE_SECRET, 300)
    with pytest.raises(TimestampError, match=r"outside the \d+s tolerance"):
        verifier.verify(EXAMPLE_HEADERS, EXAMPLE_BODY, T0 - offset)


@pytest.mark.parametrize("secret", ["whsec_!!!!", "whsec_", "whsec_abc"])
def test_standard_secret_invalid(secret: str) -> None:
    """A secret that is not base64 after ``whsec_`` raises ValueError."""
    with pytest.raises(ValueError, match="Standard Webhooks secret") as caught:
        decode_standard_secret(secret)
    assert secret not in str(caught.value)


def test_standard_secret_key() -> None:
    """The key of a ``whsec_`` secret is the base64-decoded part."""
    assert decode_standard_secret(EXAMPLE_SECRET) == b"testsecret1234567890"


def test_hmac_base64_without_prefix() -> None:
    """A Shopify-style base64 digest verifies over the raw body."""
    verifier = HmacVerifier(
        SHOPIFY_SECRET.encode(), 300, header="X-Shopify-Hmac-Sha256", encoding="base64"
    )
    headers = {"x-shopify-hmac-sha256": SHOPIFY_DIGEST}
    assert verifier.verify(headers, SHOPIFY_BODY, T0) is None


def test_hmac_base64_digest_as_hex() -> None:
    """The same digest written in hex is rejected by a base64 verifier."""
    verifier = HmacVerifier(
        SHOPIFY_SECRET.encode(), 300, header="X-Shopify-Hmac-Sha256", encoding="base64"
    )
    digest_hex = base64.b64decode(SHOPIFY_DIGEST).hex()
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify({"x-shopify-hmac-sha256": digest_hex}, SHOPIFY_BODY, T0)


def test_hmac_base64_with_prefix() -> None:
    """A base64 digest after a prefix verifies."""
    digest = base64.b64encode(hmac_digest(HMAC_BODY)).decode()
    verifier = hmac_verifier(encoding="base64", prefix="sha256=")
    headers = {"x-signature": f"sha256={digest}"}
    assert verifier.verify(headers, HMAC_BODY, T0) is None


def test_hmac_hex_with_prefix() -> None:
    """A GitHub-style ``sha256=`` hex digest verifies, in either letter case."""
    digest = hmac_digest(HMAC_BODY).hex().upper()
    verifier = hmac_verifier(header="X-Hub-Signature-256", prefix="sha256=")
    headers = {"x-hub-signature-256": f"sha256={digest}"}
    assert verifier.verify(headers, HMAC_BODY, T0) is None


def test_hmac_hex_without_prefix() -> None:
    """A bare hex digest verifies."""
    headers = {"x-signature": hmac_digest(HMAC_BODY).hex()}
    assert hmac_verifier().verify(headers, HMAC_BODY, T0) is None


def test_hmac_missing_prefix() -> None:
    """A digest without the configured prefix is rejected."""
    headers = {"x-signature": hmac_digest(HMAC_BODY).hex()}
    verifier = hmac_verifier(prefix="sha256=")
    with pytest.raises(SignatureError, match="does not start with 'sha256='"):
        verifier.verify(headers, HMAC_BODY, T0)


def test_hmac_missing_header() -> None:
    """A request without the signature header is rejected."""
    with pytest.raises(SignatureError, match="missing x-signature header"):
        hmac_verifier().verify({}, HMAC_BODY, T0)


@pytest.mark.parametrize("algorithm", ["sha1", "sha512"])
def test_hmac_other_algorithms(algorithm: str) -> None:
    """SHA-1 and SHA-512 digests verify when configured."""
    headers = {"x-signature": hmac_digest(HMAC_BODY, algorithm).hex()}
    verifier = hmac_verifier(algorithm=algorithm)
    assert verifier.verify(headers, HMAC_BODY, T0) is None


def test_hmac_algorithm_mismatch() -> None:
    """A SHA-1 digest is rejected by a SHA-256 verifier."""
    headers = {"x-signature": hmac_digest(HMAC_BODY, "sha1").hex()}
    with pytest.raises(SignatureError, match="does not match"):
        hmac_verifier().verify(headers, HMAC_BODY, T0)


def slack_style(timestamp: int) -> dict[str, str]:
    message = f"v0:{timestamp}:".encode() + HMAC_BODY
    return {
        "x-request-timestamp": str(timestamp),
        "x-signature": "v0=" + hmac_digest(message).hex(),
    }


def timestamped_verifier() -> HmacVerifier:
    return hmac_verifier(
        prefix="v0=",
        timestamp_header="X-Request-Timestamp",
        signed_content="v0:{timestamp}:{body}",
    )


def test_hmac_timestamp_template() -> None:
    """A digest over a timestamp template verifies inside the tolerance."""
    verifier = timestamped_verifier()
    assert verifier.verify(slack_style(T0), HMAC_BODY, T0 + 299) is None


def test_hmac_timestamp_stale() -> None:
    """An authentic digest with a stale timestamp raises TimestampError."""
    with pytest.raises(TimestampError, match=r"outside the \d+s tolerance"):
        timestamped_verifier().verify(slack_style(T0), HMAC_BODY, T0 + 301)


def test_hmac_timestamp_changed() -> None:
    """A timestamp changed after signing is rejected as a bad signature."""
    headers = dict(slack_style(T0), **{"x-request-timestamp": str(T0 + 1)})
    with pytest.raises(SignatureError, match="does not match"):
        timestamped_verifier().verify(headers, HMAC_BODY, T0)


def test_hmac_timestamp_not_number() -> None:
    """A timestamp header that is not Unix seconds is rejected."""
    headers = dict(slack_style(T0), **{"x-request-timestamp": "yesterday"})
    with pytest.raises(SignatureError, match="invalid x-request-timestamp"):
        timestamped_verifier().verify(headers, HMAC_BODY, T0)


def test_options_build_hmac_base64_secret() -> None:
    """A base64 secret_encoding decodes the secret into the HMAC key."""
    options = WebhookOptions(
        kind="hmac", header="X-Signature", secret_encoding="base64"
    )
    secret = base64.b64encode(HMAC_SECRET.encode()).decode()
    verifier = options.build(secret, 300)
    headers = {"x-signature": hmac_digest(HMAC_BODY).hex()}
    assert verifier.verify(headers, HMAC_BODY, T0) is None


def test_options_build_bad_hex_secret() -> None:
    """A secret that is not hex with secret_encoding 'hex' raises ValueError."""
    options = WebhookOptions(kind="hmac", header="X-Signature", secret_encoding="hex")
    with pytest.raises(ValueError, match="not valid hex"):
        options.build("zz-not-hex", 300)


@pytest.mark.parametrize(
    ("settings", "location", "message"),
    [
        ({"kind": "hmac"}, ("header",), "required when kind = 'hmac'"),
        (
            {"kind": "standard-webhooks", "algorithm": "sha1"},
            ("algorithm",),
            "applies only to kind = 'hmac'",
        ),
        (
            {"kind": "hmac", "header": "X-S", "signed_content": "{timestamp}"},
            ("signed_content",),
            "must contain {body} exactly once",
        ),
        (
            {"kind": "hmac", "header": "X-S", "signed_content": "{id}.{body}"},
            ("signed_content",),
            "unknown placeholder",
        ),
        (
            {"kind": "hmac", "header": "X-S", "signed_content": "{timestamp}{body}"},
            ("signed_content",),
            "set timestamp_header",
        ),
        (
            {"kind": "hmac", "header": "X-S", "encoding": "base32"},
            ("encoding",),
            "'hex' or 'base64'",
        ),
    ],
)
def test_options_invalid(
    settings: dict[str, Any], location: tuple[str, ...], message: str
) -> None:
    """Each invalid webhook table is rejected at the key that is wrong."""
    with pytest.raises(ValidationError) as caught:
        WebhookOptions.model_validate(settings)
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == location
    assert message in errors[0]["msg"]
