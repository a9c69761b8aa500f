"""Parsing helpers that several connectors share: JSON bodies and times."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from connectors.base import PageRequest
from syncd.errors import ResponseError

T = TypeVar("T")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """Return a response's JSON object; raise ResponseError for anything else."""
    body = _json(response)
    if not isinstance(body, dict):
        raise ResponseError(f"expected a JSON object, got {type(body).__name__}")
    return body


def json_array(response: httpx.Response) -> list[Any]:
    """Return a response's JSON array; raise ResponseError for anything else."""
    body = _json(response)
    if not isinstance(body, list):
        raise ResponseError(f"expected a JSON array, got {type(body).__name__}")
    return body


def _json(response: httpx.Response) -> Any:
    # ValueError also covers integers beyond Python's 4,300-digit limit.
    try:
        return response.json()
    except (ValueError, RecursionError):
        kind = response.headers.get("content-type", "no content type")
        raise ResponseError(f"response is not JSON ({kind})") from None


def link_request(url: str) -> PageRequest:
    """Turn a ``Link`` URL into a request whose params are the URL's query.

    Keeping the query as params makes a stored cursor readable and lets the
    core recognise a next link that points back to a page already read.
    """
    parts = urlsplit(url)
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    path = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return PageRequest(url=path, params=params)


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


def read_items(
    items: list[Any], build: Callable[[Any], T]
) -> tuple[list[T], list[tuple[str, str]]]:
    """Build a record from each listed item, setting aside the unreadable ones.

    Returns the records and, for each item whose ``build`` raised ValueError,
    its JSON text and the reason, for ``Page.rejected``.
    """
    records: list[T] = []
    rejected: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        try:
            records.append(build(item))
        except (ValueError, RecursionError) as exc:
            rejected.append((item_text(item), f"item {index}: {exc}"))
    return records, rejected


def item_text(item: Any) -> str:
    """Return a listed item as JSON text for quarantine, or its repr if not JSON."""
    try:
        return json.dumps(item, ensure_ascii=False)
    except (ValueError, RecursionError):
        pass
    try:
        return repr(item)[:10_000]
    except RecursionError:
        return "(an item nested too deeply to show)"
