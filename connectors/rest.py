"""A connector for any JSON list API, configured entirely in TOML.

Each listed item is one event. Its dedup key is the item's id, or
``<id>:<version>`` when ``version_field`` is set (an entity version: a
webhook and a poll that see one resource at one version are one entry).
``occurred_at`` comes from ``time_field``; the core's poll cursor is the
newest such time seen, and each poll starts ``lookback`` before it.

Cursor kinds set what the first request of a run sends:

- ``timestamp``: ``cursor.param`` carries the start of the window, and
  ``cursor.until_param`` (optional) its end.
- ``id``: ``cursor.param`` carries the last id seen. The core keeps no id
  between runs, so each run starts without it and pages forward by id.
- ``token``: nothing; the API only offers next-page tokens.

Pagination kinds set how a listing goes on: ``link`` follows the Link header's
``rel="next"``, ``next_token`` sends a response field back as a query
parameter, ``page_number`` counts pages and ``id`` sends the last id of each
page. ``page_number`` and ``id`` stop at a page with fewer than ``page_size``
items, so ``page_size`` must not exceed the API's maximum page size.

Page numbers are offsets into a list that may change while it is read. When
an item moves out of an earlier page (updated past the end, or deleted), the
next page shifts back by one and one item is not read in that run. The
next poll re-reads the last ``lookback`` of provider time and the database
drops repeats, so a skipped item whose time is within ``lookback`` of the
newest time seen is read then. A reconcile re-reads its whole window.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from connectors.base import (
    Connector,
    EventRecord,
    Page,
    PageRequest,
    Window,
    dump_json,
)
from connectors.base import parse_json_body as _parse_json_body
from connectors.parsing import link_request, not_json_error, read_items
from connectors.verifiers import VerifiedWebhooks, WebhookOptions
from syncd.errors import ConfigError, PayloadError, ResponseError
from syncd.units import to_utc_iso

if TYPE_CHECKING:
    from syncd.config import ProviderConfig

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MISSING: Any = object()
_FIELD_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")

TimeFormat = Literal["iso8601", "epoch_seconds", "epoch_millis"]
Problems = list[tuple[str, str]]


def _check_field_path(value: str) -> str:
    if not _FIELD_PATH.fullmatch(value):
        raise ValueError(
            f"invalid field path {value!r}: write field names joined by dots, "
            "e.g. 'id' or 'result.items'"
        )
    return value


FieldPath = Annotated[str, AfterValidator(_check_field_path)]


class CursorOptions(BaseModel):
    """The ``cursor`` table: what the first request of a run sends."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["timestamp", "id", "token"]
    param: str | None = Field(default=None, validate_default=True)
    format: TimeFormat | None = None
    until_param: str | None = None
    field: FieldPath | None = None

    @field_validator("param")
    @classmethod
    def _check_param(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind in ("timestamp", "id") and not value:
            raise ValueError(
                f"required when kind = {kind!r}; name the query parameter that "
                "takes the cursor, e.g. 'updated_since' or 'since_id'"
            )
        if kind == "token" and value is not None:
            raise ValueError("a token cursor sends no parameter; remove it")
        return value

    @field_validator("format", "until_param")
    @classmethod
    def _check_timestamp_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _only_for_kind(value, info, "timestamp")

    @field_validator("field")
    @classmethod
    def _check_id_only(cls, value: Any, info: ValidationInfo) -> Any:
        return _only_for_kind(value, info, "id")


class PaginationOptions(BaseModel):
    """The ``pagination`` table: how a listing goes from page to page."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["link", "next_token", "page_number", "id", "none"]
    token_field: FieldPath | None = Field(default=None, validate_default=True)
    token_param: str | None = Field(default=None, validate_default=True)
    page_param: str | None = Field(default=None, validate_default=True)
    first_page: int | None = Field(default=None, ge=0)

    @field_validator("token_field", "token_param")
    @classmethod
    def _check_token(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _required_for_kind(value, info, "next_token")

    @field_validator("page_param")
    @classmethod
    def _check_page(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _required_for_kind(value, info, "page_number")

    @field_validator("first_page")
    @classmethod
    def _check_first_page(cls, value: int | None, info: ValidationInfo) -> Any:
        return _only_for_kind(value, info, "page_number")


def _only_for_kind(value: Any, info: ValidationInfo, kind: str) -> Any:
    if value is not None and info.data.get("kind", kind) != kind:
        raise ValueError(f"applies only to kind = {kind!r}; remove it")
    return value


def _required_for_kind(value: Any, info: ValidationInfo, kind: str) -> Any:
    if info.data.get("kind") == kind and not value:
        raise ValueError(f"required when kind = {kind!r}")
    return _only_for_kind(value, info, kind)


class ListingOptions(BaseModel):
    """Keys that describe one JSON list API: request, items, fields, paging."""

    model_config = ConfigDict(extra="forbid")

    path: str
    params: dict[str, str | int | float | bool] = {}
    auth_header: str = "Authorization"
    auth_format: str = "Bearer {token}"
    items: str = ""
    id_field: FieldPath
    type_field: FieldPath | None = None
    type: str | None = None
    time_field: FieldPath
    time_format: TimeFormat = "iso8601"
    version_field: FieldPath | None = None
    page_size_param: str | None = None
    cursor: CursorOptions
    pagination: PaginationOptions

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        parts = urlsplit(value)
        relative = not (parts.scheme or parts.netloc or parts.query)
        if not (value.startswith("/") and relative and not parts.fragment):
            raise ValueError(
                f"invalid path {value!r}: write it relative to api_base_url, "
                "e.g. '/v2/events', and put query parameters in params"
            )
        return value

    @field_validator("auth_format")
    @classmethod
    def _check_auth_format(cls, value: str) -> str:
        if value.count("{token}") != 1:
            raise ValueError(
                f"{value!r} must contain {{token}} exactly once, "
                "e.g. 'Bearer {token}' or '{token}'"
            )
        return value

    @field_validator("items")
    @classmethod
    def _check_items(cls, value: str) -> str:
        return value if value == "" else _check_field_path(value)

    @field_validator("type")
    @classmethod
    def _check_type(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("type_field") is not None:
            raise ValueError(
                "set type_field (a field of each item) or type (one fixed "
                "type for every item), not both"
            )
        if value == "":
            raise ValueError("must not be empty")
        return value

    @field_validator("pagination")
    @classmethod
    def _check_pagination(
        cls, value: PaginationOptions, info: ValidationInfo
    ) -> PaginationOptions:
        cursor = info.data.get("cursor")
        if value.kind == "id" and cursor is not None and cursor.kind != "id":
            raise ValueError(
                "kind = 'id' sends the last id of each page in cursor.param, "
                "so it needs cursor.kind = 'id'"
            )
        return value


class RestOptions(ListingOptions):
    """Keys of a ``rest`` provider table beyond the common ones."""

    webhook: WebhookOptions | None = None
    webhook_item: str = ""
    webhook_type_field: FieldPath | None = None

    @field_validator("webhook_item")
    @classmethod
    def _check_webhook_item(cls, value: str) -> str:
        return value if value == "" else _check_field_path(value)


class RestListing:
    """The requests and pages of one JSON list API, as ListingOptions describe."""

    def __init__(self, options: ListingOptions, provider: ProviderConfig) -> None:
        self.options = options
        self.provider = provider

    def auth_headers(self) -> dict[str, str]:
        """Return the configured authentication header, or none without a token."""
        token = self.provider.api_token
        if token is None:
            return {}
        value = self.options.auth_format.replace("{token}", token.get_secret_value())
        return {self.options.auth_header: value}

    def first_request(self, window: Window) -> PageRequest:
        """Return the request for the first page of ``window``."""
        options = self.options
        params = [(name, _param_text(value)) for name, value in options.params.items()]
        params.extend(self._window_params(window))
        if options.page_size_param:
            params.append((options.page_size_param, str(self.provider.page_size)))
        pagination = options.pagination
        if pagination.kind == "page_number":
            assert pagination.page_param is not None
            first_page = pagination.first_page
            page = 1 if first_page is None else first_page
            params.append((pagination.page_param, str(page)))
        return PageRequest(url=options.path, params=tuple(params))

    def _window_params(self, window: Window) -> list[tuple[str, str]]:
        cursor = self.options.cursor
        # NOTE: an id cursor sends no start id, because the core keeps only the
        # newest time seen between runs. So each run re-reads the listing from
        # its first id, and the database drops the repeats.
        if cursor.kind != "timestamp":
            return []
        assert cursor.param is not None
        time_format = cursor.format or self.options.time_format
        params = []
        if window.since is not None:
            params.append((cursor.param, format_time(window.since, time_format)))
        if window.until is not None and cursor.until_param:
            until = format_time(window.until, time_format, round_up=True)
            params.append((cursor.until_param, until))
        return params

    def parse_page(self, request: PageRequest, response: httpx.Response) -> Page:
        """Turn one response into events and the request for the next page."""
        body = response_json(response)
        items = self._items(body, response)
        records, rejected = read_items(
            items, lambda item, _text: self.record(item, dump_json(item))
        )
        next_request = self._next(request, response, body, items)
        return Page(records=records, next=next_request, rejected=rejected)

    def _items(self, body: Any, response: httpx.Response) -> list[Any]:
        path = self.options.items
        found = lookup(body, path)
        where = _describe_url(response)
        if found is MISSING:
            raise ResponseError(
                f"the response from {where} has no {path!r} field "
                f"({_describe_closest(body, path)}); check the items key, or "
                "whether the API answered an error"
            )
        if not isinstance(found, list):
            name = repr(path) if path else "top-level value"
            raise ResponseError(
                f"the {name} of the response from {where} is {_shape(found)}, "
                "not an array of items; set items to the field that contains them"
            )
        return found

    def _next(
        self,
        request: PageRequest,
        response: httpx.Response,
        body: Any,
        items: list[Any],
    ) -> PageRequest | None:
        kind = self.options.pagination.kind
        if kind == "link":
            return _link_request(response)
        if kind == "next_token":
            return self._token_request(request, body, items)
        if kind == "none" or len(items) < self.provider.page_size:
            return None
        if kind == "page_number":
            return self._page_number_request(request)
        return self._id_request(request, items[-1])

    def _token_request(
        self, request: PageRequest, body: Any, items: list[Any]
    ) -> PageRequest | None:
        pagination = self.options.pagination
        assert pagination.token_field and pagination.token_param
        token = lookup(body, pagination.token_field)
        if token is MISSING or token is None or token == "" or not items:
            return None
        if isinstance(token, bool) or not isinstance(token, str | int):
            raise ResponseError(
                f"next-page token {pagination.token_field!r} is "
                f"{_shape(token)}, not a string"
            )
        if str(token) == dict(request.params).get(pagination.token_param):
            raise ResponseError(
                f"next-page token {pagination.token_field!r} repeats the token "
                "just sent, so the listing would never end"
            )
        return _with_param(request, pagination.token_param, str(token))

    def _page_number_request(self, request: PageRequest) -> PageRequest:
        page_param = self.options.pagination.page_param
        assert page_param is not None
        page = int(dict(request.params)[page_param])
        return _with_param(request, page_param, str(page + 1))

    def _id_request(self, request: PageRequest, last_item: Any) -> PageRequest:
        cursor = self.options.cursor
        assert cursor.param is not None
        field = cursor.field or self.options.id_field
        try:
            last_id = _id_text(last_item, field)
        except ValueError as exc:
            raise ResponseError(f"the last item of the page: {exc}") from None

        sent = dict(request.params).get(cursor.param)
        if sent is not None and not _increases(sent, last_id):
            raise ResponseError(
                f"the last {field!r} of the page, {last_id!r}, is not greater than "
                f"the {sent!r} just sent; an id cursor needs a listing in "
                "increasing id order"
            )
        return _with_param(request, cursor.param, last_id)

    def record(
        self, item: Any, payload: str, event_type: str | None = None
    ) -> EventRecord:
        """Build the event of one item; raise ValueError naming what is wrong.

        ``event_type`` replaces the type that the options read from the item.
        """
        options = self.options
        if not isinstance(item, dict):
            raise ValueError(f"expected a JSON object, got {_shape(item)}")
        ident = _id_text(item, options.id_field)
        kind = event_type or options.type
        if kind is None:
            kind = _type_text(item, options.type_field or "type", ident)
        occurred_at = _item_time(item, options.time_field, options.time_format, ident)

        version = None
        if options.version_field is not None:
            version = self._version(item, ident)
        key = ident if version is None else f"{ident}:{version}"
        return EventRecord(
            key=key,
            type=kind,
            occurred_at=occurred_at,
            payload=payload,
            resource=ident,
            version=version,
        )

    def _version(self, item: Mapping[str, Any], ident: str) -> str:
        options = self.options
        assert options.version_field is not None
        if options.version_field == options.time_field:
            moment = _item_time(item, options.time_field, options.time_format, ident)
            return to_utc_iso(moment)
        value = lookup(item, options.version_field)
        try:
            return version_text(value)
        except ValueError as exc:
            raise ValueError(f"item {ident}: {options.version_field!r} {exc}") from None


class RestConnector(VerifiedWebhooks, Connector):
    """Any JSON list API, with optional Standard Webhooks or HMAC webhooks."""

    name = "rest"
    default_api_base_url = ""
    Options = RestOptions

    def __init__(self, provider: ProviderConfig) -> None:
        super().__init__(provider)
        raise_problems(provider, self.check_provider(provider))
        self.listing = RestListing(self.options, provider)
        if provider.webhook_secret is not None and self.options.webhook is not None:
            self.verifier = self.options.webhook.build(
                provider.webhook_secret.get_secret_value(),
                provider.signature_tolerance.total_seconds(),
            )

    @classmethod
    def check_provider(cls, provider: ProviderConfig) -> Problems:
        """Return (key, message) problems that involve the common keys."""
        options: RestOptions = provider.options
        problems = check_api_base_url(provider)
        secret = provider.webhook_secret
        if secret is None:
            return problems
        if options.webhook is None:
            problems.append(
                (
                    "webhook",
                    "required when webhook_secret is set; add a webhook table "
                    "with kind = 'standard-webhooks' or kind = 'hmac'",
                )
            )
            return problems
        tolerance = provider.signature_tolerance.total_seconds()
        try:
            options.webhook.build(secret.get_secret_value(), tolerance)
        except ValueError as exc:
            problems.append(("webhook_secret", str(exc)))
        return problems

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        text, document = parse_json_body(body)
        item = lookup(document, self.options.webhook_item)
        if item is MISSING:
            raise PayloadError(
                f"the body has no {self.options.webhook_item!r} field; check "
                "webhook_item"
            )
        event_type = self._webhook_type(document)
        try:
            return [self.listing.record(item, text, event_type)]
        except ValueError as exc:
            raise PayloadError(str(exc)) from None

    def _webhook_type(self, document: Any) -> str | None:
        type_field = self.options.webhook_type_field
        if type_field is None:
            return None
        kind = lookup(document, type_field)
        if not isinstance(kind, str) or not kind:
            raise PayloadError(f"the body has no string {type_field!r}")
        return kind

    def auth_headers(self) -> dict[str, str]:
        return self.listing.auth_headers()

    def first_request(self, listing: str, window: Window) -> PageRequest:
        return self.listing.first_request(window)

    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        return self.listing.parse_page(request, response)


def check_api_base_url(provider: ProviderConfig) -> Problems:
    """Return a problem when a generic connector has no ``api_base_url``."""
    if provider.api_base_url:
        return []
    return [
        (
            "api_base_url",
            "required for a listing: set the API's scheme and host, "
            "e.g. 'https://api.example.com'",
        )
    ]


def raise_problems(provider: ProviderConfig, problems: Problems) -> None:
    """Raise ConfigError listing ``problems`` under the provider's key path."""
    if problems:
        where = f"providers.{provider.name}"
        raise ConfigError([f"{where}.{key}: {message}" for key, message in problems])


def lookup(value: Any, path: str) -> Any:
    """Return the value at a dotted path of nested objects, or MISSING."""
    if path == "":
        return value
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            return MISSING
        value = value[name]
    return value


def parse_json_body(body: bytes) -> tuple[str, Any]:
    """Return a webhook body as text and as JSON; raise PayloadError if invalid."""
    return _parse_json_body(body)


def response_json(response: httpx.Response) -> Any:
    """Return a response's JSON; raise ResponseError if it is not JSON."""
    try:
        return response.json()
    except (ValueError, RecursionError) as exc:
        subject = f"the response from {_describe_url(response)}"
        raise not_json_error(response, exc, subject) from None


def parse_time_value(value: Any, time_format: TimeFormat) -> datetime:
    """Read a provider time as aware UTC; raise ValueError if it is not one.

    An ISO 8601 string with an offset is read as such in every ``time_format``.
    Epoch numbers, or strings of digits, are read in the unit that
    ``time_format`` names, exactly to the microsecond.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a time, got {_shape(value)}")
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        return _parse_iso(value)
    if time_format == "iso8601":
        raise ValueError(
            f"expected an ISO 8601 time, got the number {value!r}; set "
            "time_format to 'epoch_seconds' or 'epoch_millis'"
        )
    return _from_epoch(value, time_format)


def _parse_iso(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid time {text[:40]!r}: expected ISO 8601 with an offset, "
            "e.g. '2024-05-01T10:00:00Z'"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"time {text[:40]!r} has no UTC offset")
    return moment.astimezone(UTC)


def _from_epoch(value: str | int | float, time_format: TimeFormat) -> datetime:
    per_unit = 10**6 if time_format == "epoch_seconds" else 10**3
    try:
        amount = Decimal(str(value)) * per_unit
        micros = int(amount.to_integral_value(rounding=ROUND_HALF_EVEN))
        return EPOCH + timedelta(microseconds=micros)
    except (InvalidOperation, OverflowError):
        raise ValueError(f"epoch time {value!r} is out of range") from None


def format_time(
    moment: datetime, time_format: TimeFormat, round_up: bool = False
) -> str:
    """Write a time for a query parameter, rounded down (or up) to the unit.

    ISO 8601 is written in UTC with ``Z`` and keeps milliseconds when there are
    any; epoch formats are whole seconds or milliseconds.
    """
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    if time_format == "epoch_seconds":
        return str(_divide(micros, 10**6, round_up))
    millis = _divide(micros, 10**3, round_up)
    if time_format == "epoch_millis":
        return str(millis)
    rounded = EPOCH + timedelta(milliseconds=millis)
    text = rounded.strftime("%Y-%m-%dT%H:%M:%S")
    if rounded.microsecond:
        text += f".{rounded.microsecond // 1000:03d}"
    return text + "Z"


def _divide(value: int, divisor: int, round_up: bool) -> int:
    return -(-value // divisor) if round_up else value // divisor


def version_text(value: Any) -> str:
    """Return the key text of an entity version: a counter, a time or a tag.

    An ISO 8601 time with an offset is written in UTC, so that ``Z`` and
    ``+00:00`` forms of one instant give one key.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"is {_shape(value)}, not a string or integer version")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    return to_utc_iso(moment)


def _item_time(
    item: Mapping[str, Any], path: str, time_format: TimeFormat, ident: str
) -> datetime:
    try:
        return parse_time_value(lookup(item, path), time_format)
    except ValueError as exc:
        raise ValueError(f"item {ident}: {path!r} is not a time: {exc}") from None


def _id_text(item: Any, path: str) -> str:
    value = lookup(item, path)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"item has no string or integer {path!r} (got {_shape(value)})")


def _type_text(item: Mapping[str, Any], path: str, ident: str) -> str:
    value = lookup(item, path)
    if isinstance(value, str) and value:
        return value
    raise ValueError(
        f"item {ident} has no string {path!r}; set type_field to the field that "
        "names the event type, or type to one fixed type"
    )


def _increases(before: str, after: str) -> bool:
    """Compare ids as integers when both are digits, else as text."""
    if before.isdigit() and after.isdigit():
        return int(after) > int(before)
    return after > before


def _param_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _with_param(request: PageRequest, name: str, value: str) -> PageRequest:
    params = [pair for pair in request.params if pair[0] != name]
    params.append((name, value))
    return PageRequest(url=request.url, params=tuple(params))


def _link_request(response: httpx.Response) -> PageRequest | None:
    link = response.links.get("next", {}).get("url")
    if not link:
        return None
    current = str(response.url)
    absolute = urljoin(current, link)
    if absolute == current:
        raise ResponseError(
            f"the Link rel=next of {_describe_url(response)} points to the page "
            "just read, so the listing would never end"
        )
    return link_request(absolute)


def _describe_closest(value: Any, path: str) -> str:
    """Describe the deepest part of ``path`` that a JSON value has."""
    found = "the response"
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            break
        found = repr(name)
        value = value[name]
    return f"{found} is {_shape(value)}"


def _describe_url(response: httpx.Response) -> str:
    """Return ``GET scheme://host/path`` of a response, without its query."""
    url = response.request.url
    return f"{response.request.method} {url.copy_with(query=None)}"


def _shape(value: Any) -> str:
    """Describe a JSON value's type without its content, for messages."""
    if value is MISSING:
        return "missing"
    if isinstance(value, dict):
        keys = ", ".join(sorted(map(str, value))[:8]) or "none"
        return f"an object with keys {keys}"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
