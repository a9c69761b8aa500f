"""Parsing helpers that several connectors share: JSON bodies and times."""

from __future__ import annotations

import json
import json.scanner
import math
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
    except (ValueError, RecursionError) as exc:
        raise not_json_error(response, exc) from None


def not_json_error(
    response: httpx.Response, error: BaseException, subject: str = "response"
) -> ResponseError:
    """Return the error for a response body that ``json`` rejected with ``error``.

    ``subject`` begins the message, which names the content type, the size
    and the parser's reason, such as where a truncated body ends.
    """
    kind = response.headers.get("content-type", "no content type")
    reason = "nested too deeply" if isinstance(error, RecursionError) else error
    return ResponseError(
        f"{subject} ({kind}, {len(response.content)} bytes) is not valid JSON: "
        f"{str(reason)[:200]}"
    )


def json_object_with_item_texts(
    response: httpx.Response, key: str
) -> tuple[dict[str, Any], list[str | None]]:
    """Return a response's JSON object and the JSON text of each item under ``key``.

    The object is what :func:`json_object` returns. When ``body[key]`` is an
    array, the second value has one entry per item: the item's exact text in
    the response, or None. None marks an item whose text cannot be stored as
    it is, because it contains ``NaN``/``Infinity``, a number beyond the
    range of a float (such as ``1e999``), or a key repeated in one object.
    Callers serialise those with ``dump_json``, which rejects the first and
    keeps the last value of a repeated key, as the parsed item does. Keeping
    the text saves serialising every listed item a second time. When
    ``body[key]`` is missing or not an array, the list is empty.
    """
    content = response.content
    try:
        # The same decoding as json.loads of bytes, which httpx uses.
        text = content.decode(json.detect_encoding(content), "surrogatepass")
        return _ItemScanner(key).object(text)
    except (ValueError, RecursionError, StopIteration, IndexError):
        # StopIteration is how the scanner reports a missing value, and
        # IndexError a text that ends inside the object.
        pass
    # Not an object, or not JSON: json_object raises the usual error.
    body = json_object(response)
    items = body.get(key)
    return body, [None] * len(items) if isinstance(items, list) else []


class _ItemScanner:
    """Parse a JSON object like ``json.loads``, keeping one array's item texts.

    The object's own members are read here, and every value is parsed by the
    ``json`` module's scanner. The array under ``key`` is scanned one item at
    a time, so each item's text is a slice of the input.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.odd = 0  # NaN/Infinity constants and repeated keys seen so far
        decoder = json.JSONDecoder(
            object_pairs_hook=self._object,
            parse_constant=self._constant,
            parse_float=self._float,
        )
        self.scan = json.scanner.make_scanner(decoder)

    def _object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            self.odd += 1
        return result

    def _constant(self, name: str) -> float:
        self.odd += 1
        return float(name)

    def _float(self, text: str) -> float:
        value = float(text)
        if math.isinf(value):
            self.odd += 1  # such as 1e999, which JSON cannot write back
        return value

    def object(self, text: str) -> tuple[dict[str, Any], list[str | None]]:
        index = _skip(text, 0)
        if text[index] != "{":
            raise ValueError("not an object")
        body: dict[str, Any] = {}
        texts: list[str | None] = []
        index = _skip(text, index + 1)
        if text[index] == "}":
            index += 1
        while text[index - 1] != "}":
            if text[index] != '"':
                raise ValueError("expected a member name")
            name, index = json.decoder.scanstring(text, index + 1)
            index = _expect(text, index, ":")
            if name == self.key and text[index] == "[":
                body[name], texts, index = self._array(text, index + 1)
            else:
                body[name], index = self.scan(text, index)
                if name == self.key:
                    texts = []
            index = _after_member(text, index, "}")
        if _skip(text, index) != len(text):
            raise ValueError("extra data after the object")
        return body, texts

    def _array(self, text: str, index: int) -> tuple[list[Any], list[str | None], int]:
        items: list[Any] = []
        texts: list[str | None] = []
        index = _skip(text, index)
        if text[index] == "]":
            return items, texts, index + 1
        while True:
            odd = self.odd
            item, end = self.scan(text, index)
            items.append(item)
            texts.append(text[index:end] if self.odd == odd else None)
            if text[end] == ",":  # the usual case, checked without a regex
                index = end + 1
                if text[index] in _SPACE:
                    index = _skip(text, index)
                continue
            index = _after_member(text, end, "]")
            if text[index - 1] == "]":
                return items, texts, index


def _skip(text: str, index: int) -> int:
    """Return the index of the first non-whitespace character from ``index``."""
    return _WHITESPACE(text, index).end()


_WHITESPACE = json.decoder.WHITESPACE.match
_SPACE = frozenset(" \t\n\r")  # the whitespace characters of JSON


def _expect(text: str, index: int, character: str) -> int:
    index = _skip(text, index)
    if text[index] != character:
        raise ValueError(f"expected {character!r}")
    return _skip(text, index + 1)


def _after_member(text: str, index: int, closing: str) -> int:
    """Step over the comma after a member, or the closing bracket after the last.

    Returns the index of the next member, or the index just past ``closing``.
    """
    index = _skip(text, index)
    if text[index] == closing:
        return index + 1
    if text[index] != ",":
        raise ValueError(f"expected ',' or {closing!r}")
    return _skip(text, index + 1)


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
    items: list[Any],
    build: Callable[[Any, str | None], T],
    texts: list[str | None] | None = None,
) -> tuple[list[T], list[tuple[str, str]]]:
    """Build a record from each listed item, setting aside the unreadable ones.

    ``build`` gets the item and its exact JSON text from ``texts`` (from
    :func:`json_object_with_item_texts`), or None where there is no text.
    Returns the records and, for each item whose ``build`` raised ValueError,
    its JSON text and the reason, for ``Page.rejected``.
    """
    records: list[T] = []
    rejected: list[tuple[str, str]] = []
    for index, item in enumerate(items):
        text = texts[index] if texts else None
        try:
            records.append(build(item, text))
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
