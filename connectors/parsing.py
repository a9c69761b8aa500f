"""Parsing helpers that several connectors share: JSON bodies and times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from syncd.errors import ResponseError


def json_object(response: httpx.Response) -> dict[str, Any]:
    """Return a response's JSON object; raise ResponseError for anything else.

    ValueError also covers integers beyond Python's 4,300-digit limit.
    """
    try:
        body = response.json()
    except (ValueError, RecursionError):
        kind = response.headers.get("content-type", "no content type")
        raise ResponseError(f"response is not JSON ({kind})") from None
    if not isinstance(body, dict):
        raise ResponseError(f"expected a JSON object, got {type(body).__name__}")
    return body


def parse_time(value: str, field: str) -> datetime:
    """Parse an ISO 8601 time with an offset; raise ValueError naming ``field``."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid {field} {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"{field} {value[:40]!r} has no UTC offset")
    return moment.astimezone(UTC)


def version_text(moment: datetime) -> str:
    """Format a version time as UTC ISO 8601 with ``Z``.

    The fraction of a second is left out when it is zero and written in
    milliseconds when it is whole milliseconds, so each instant has one text.
    """
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond % 1000:
        text += f".{utc.microsecond:06d}"
    elif utc.microsecond:
        text += f".{utc.microsecond // 1000:03d}"
    return text + "Z"
