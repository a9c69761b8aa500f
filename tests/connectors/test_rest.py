"""Tests of the REST connector: options, pages, cursors and polls into the log."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.base import PageRequest, Window
from connectors.rest import (
    RestConnector,
    format_time,
    parse_time_value,
    version_text,
)
from syncd import config
from syncd.errors import ConfigError, PayloadError, ResponseError, SignatureError
from syncd.models import Event
from syncd.polling import RunReport
from syncd.reconcile import ProviderRunner
from syncd.store import Store, load_cursor, record_events

API = "http://127.0.0.1:9"
TOKEN = "rest-test-token"
WEBHOOK_SECRET = "rest-webhook-secret"
T0 = 1714557600  # 2024-05-01T10:00:00Z
NAME = "items"


def iso(seconds: float) -> str:
    """Write Unix seconds as ISO 8601 UTC with ``Z`` and milliseconds if any."""
    moment = datetime.fromtimestamp(seconds, UTC)
    text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.replace(".000Z", "Z")


class FakeApi:
    """An in-memory list API that filters by time or id and pages five ways."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.pagination = "link"
        self.envelope: str | None = "data"
        self.time_unit = "iso8601"

    def add(self, ident: int | str, updated_at: Any, **fields: Any) -> dict[str, Any]:
        item = {"id": ident, "updated_at": updated_at, **fields}
        self.items.append(item)
        return item

    def sent(self, name: str) -> list[str | None]:
        return [request.url.params.get(name) for request in self.requests]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        params = request.url.params
        selected = self._selected(params)
        limit = int(params.get("limit", "100"))
        offset = self._offset(params, limit)
        page = selected[offset : offset + limit]
        if self.pagination == "none":
            page = selected
        more = offset + limit < len(selected)
        return self._response(request, page, offset + limit if more else None)

    def _instant(self, value: Any) -> float:
        if isinstance(value, str) and not value.isdigit():
            return datetime.fromisoformat(value).timestamp()
        scale = 1000 if self.time_unit == "epoch_millis" else 1
        return int(value) / scale

    def _selected(self, params: httpx.QueryParams) -> list[dict[str, Any]]:
        if self.pagination == "id":
            after = int(params.get("since_id", "0"))
            newer = [item for item in self.items if item["id"] > after]
            return sorted(newer, key=lambda item: item["id"])
        since = params.get("updated_since")
        chosen = [
            item
            for item in self.items
            if since is None
            or self._instant(item["updated_at"]) >= self._instant(since)
        ]
        return sorted(
            chosen, key=lambda item: (self._instant(item["updated_at"]), item["id"])
        )

    def _offset(self, params: httpx.QueryParams, limit: int) -> int:
        if self.pagination == "link":
            return int(params.get("offset", "0"))
        if self.pagination == "next_token":
            return int(params.get("cursor", "0"))
        if self.pagination == "page_number":
            return (int(params["page"]) - 1) * limit
        return 0

    def _response(
        self, request: httpx.Request, page: list[Any], after: int | None
    ) -> httpx.Response:
        headers = {}
        if self.pagination == "link" and after is not None:
            link = request.url.copy_set_param("offset", str(after))
            headers["link"] = f'<{link}>; rel="next"'
        token = str(after) if after is not None else None
        body: Any = page
        if self.envelope is not None:
            body = {self.envelope: page, "meta": {"next_cursor": token}}
        return httpx.Response(200, json=body, headers=headers)


class Clock:
    """A settable Unix clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(**overrides: Any) -> dict[str, Any]:
    """Return a ``rest`` provider table for the fake API, with overrides."""
    settings: dict[str, Any] = {
        "connector": "rest",
        "api_base_url": API,
        "api_token": TOKEN,
        "start_from": "2024-05-01T09:00:00Z",
        "lookback": "60s",
        "page_size": 2,
        "path": "/v1/items",
        "items": "data",
        "id_field": "id",
        "type": "item.updated",
        "time_field": "updated_at",
        "page_size_param": "limit",
        "cursor": {"kind": "timestamp", "param": "updated_since"},
        "pagination": {"kind": "link"},
    }
    settings.update(overrides)
    return settings


def make_connector(**overrides: Any) -> RestConnector:
    parsed = config.parse({"providers": {NAME: table(**overrides)}})
    return RestConnector(parsed.providers[NAME])


def parse_problems(settings: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config.parse({"providers": {NAME: settings}})
    return caught.value.problems


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> Iterator[httpx.Client]:
    """Return an HTTP client whose requests to the API reach ``api``."""
    router = respx.MockRouter(base_url=API, assert_all_called=False)
    router.get("/v1/items").mock(side_effect=api.handle)
    with httpx.Client(transport=httpx.MockTransport(router.handler)) as opened:
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 60)


def make_runner(
    store: Store, client: httpx.Client, clock: Clock, **overrides: Any
) -> ProviderRunner:
    sleeps: list[float] = []
    connector = make_connector(**overrides)
    return ProviderRunner(store, connector, client, clock=clock, sleep=sleeps.append)


def poll(runner: ProviderRunner) -> RunReport:
    (report,) = runner.poll()
    return report


def logged(store: Store) -> Counter[str]:
    with store.session() as session:
        return Counter(session.execute(select(Event.key)).scalars())


def cursor_state(store: Store) -> dict[str, Any]:
    with store.session() as session:
        return load_cursor(session, NAME, "events")


def response(body: Any, url: str = f"{API}/v1/items", **headers: str) -> httpx.Response:
    return httpx.Response(
        200, json=body, headers=headers, request=httpx.Request("GET", url)
    )


# Pagination kinds


def test_link_pages_all_items(store: Store, api: FakeApi, client, clock) -> None:
    """Link rel=next pagination reads every page and logs each item once."""
    for ident in range(1, 6):
        api.add(ident, iso(T0 - 50 + ident))
    report = poll(make_runner(store, client, clock))

    assert report.ok
    assert report.pages == 3
    assert api.sent("offset") == [None, "2", "4"]
    assert logged(store) == Counter({"1": 1, "2": 1, "3": 1, "4": 1, "5": 1})


def test_link_keeps_query_of_next(api: FakeApi, client, clock) -> None:
    """The next request carries the query of the Link URL as its params."""
    connector = make_connector()
    link = f'<{API}/v1/items?updated_since=x&offset=2&limit=2>; rel="next"'
    page = connector.parse_page(
        "events", PageRequest("/v1/items"), response({"data": []}, link=link)
    )
    assert page.next == PageRequest(
        f"{API}/v1/items", (("updated_since", "x"), ("offset", "2"), ("limit", "2"))
    )


def test_link_to_other_origin_fails(store: Store, api: FakeApi, clock) -> None:
    """A Link rel=next to another origin fails the run before any request there."""
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = {"data": [{"id": 1, "updated_at": iso(T0)}]}
        link = '<http://127.0.0.2:9/v1/items?offset=1>; rel="next"'
        return httpx.Response(200, json=body, headers={"link": link})

    with httpx.Client(transport=httpx.MockTransport(answer)) as other:
        report = poll(make_runner(store, other, clock))

    assert not report.ok
    assert "not on api_base_url" in str(report.error)
    assert len(requests) == 1


def test_next_token_pages_all_items(store: Store, api: FakeApi, client, clock) -> None:
    """Next-token pagination sends the response's token until it is null."""
    api.pagination = "next_token"
    for ident in range(1, 6):
        api.add(ident, iso(T0 - 50 + ident))
    pagination = {
        "kind": "next_token",
        "token_field": "meta.next_cursor",
        "token_param": "cursor",
    }
    report = poll(make_runner(store, client, clock, pagination=pagination))

    assert report.ok
    assert api.sent("cursor") == [None, "2", "4"]
    assert logged(store) == Counter({"1": 1, "2": 1, "3": 1, "4": 1, "5": 1})


def test_next_token_repeated_fails() -> None:
    """A token equal to the one just sent raises ResponseError, not a loop."""
    pagination = {"kind": "next_token", "token_field": "next", "token_param": "c"}
    connector = make_connector(pagination=pagination)
    request = PageRequest("/v1/items", (("c", "abc"),))
    body = {"data": [{"id": 1, "updated_at": iso(T0)}], "next": "abc"}
    with pytest.raises(ResponseError, match="repeats the token"):
        connector.parse_page("events", request, response(body))


@pytest.mark.parametrize(
    ("count", "pages"), [(5, ["1", "2", "3"]), (4, ["1", "2", "3"])]
)
def test_page_number_stops_short_page(
    store: Store, api: FakeApi, client, clock, count: int, pages: list[str]
) -> None:
    """Page-number pagination stops at the first page shorter than page_size."""
    api.pagination = "page_number"
    for ident in range(1, count + 1):
        api.add(ident, iso(T0 - 50 + ident))
    pagination = {"kind": "page_number", "page_param": "page"}
    report = poll(make_runner(store, client, clock, pagination=pagination))

    assert report.ok
    assert api.sent("page") == pages
    assert sum(logged(store).values()) == count


def test_page_number_first_page() -> None:
    """The first request carries the configured first page number."""
    pagination = {"kind": "page_number", "page_param": "p", "first_page": 0}
    request = make_connector(pagination=pagination).first_request(
        "events", Window(since=None, until=None)
    )
    assert ("p", "0") in request.params


def test_id_pagination_sends_last_id(store: Store, api: FakeApi, client, clock) -> None:
    """An id cursor pages with the last id of each full page."""
    api.pagination = "id"
    for ident in range(1, 6):
        api.add(ident, iso(T0 - 50 + ident))
    report = poll(
        make_runner(
            store,
            client,
            clock,
            cursor={"kind": "id", "param": "since_id"},
            pagination={"kind": "id"},
        )
    )

    assert report.ok
    assert api.sent("since_id") == [None, "2", "4"]
    assert logged(store) == Counter({"1": 1, "2": 1, "3": 1, "4": 1, "5": 1})


def test_no_pagination_top_level_array(
    store: Store, api: FakeApi, client, clock
) -> None:
    """With pagination 'none' and items '' one request reads a top-level array."""
    api.pagination = "none"
    api.envelope = None
    for ident in range(1, 4):
        api.add(ident, iso(T0 - 50 + ident))
    report = poll(
        make_runner(store, client, clock, items="", pagination={"kind": "none"})
    )

    assert report.ok
    assert len(api.requests) == 1
    assert sum(logged(store).values()) == 3


# Cursor kinds and formats


def test_timestamp_cursor_iso8601(store: Store, api: FakeApi, client, clock) -> None:
    """Polls send the start, then the newest time seen less the lookback."""
    api.add(1, iso(T0 - 10))
    runner = make_runner(store, client, clock)
    poll(runner)
    clock.now += 30
    poll(runner)

    assert api.sent("updated_since") == ["2024-05-01T09:00:00Z", "2024-05-01T09:58:50Z"]


@pytest.mark.parametrize(
    ("time_format", "stamp", "since"),
    [
        ("epoch_seconds", T0 - 10, str(T0 - 70)),
        ("epoch_millis", (T0 - 10) * 1000 + 250, str((T0 - 70) * 1000 + 250)),
    ],
)
def test_timestamp_cursor_epoch(
    store: Store, api: FakeApi, client, clock, time_format: str, stamp: int, since: str
) -> None:
    """Epoch times are read from items and sent back in the same unit."""
    api.time_unit = time_format
    api.add(1, stamp)
    runner = make_runner(store, client, clock, time_format=time_format)
    poll(runner)
    poll(runner)

    assert api.sent("updated_since")[1] == since
    assert logged(store) == Counter({"1": 1})


def test_cursor_format_differs(store: Store, api: FakeApi, client, clock) -> None:
    """cursor.format writes the query time unlike the items' format."""
    api.add(1, iso(T0 - 10))
    cursor = {"kind": "timestamp", "param": "updated_since", "format": "epoch_seconds"}
    runner = make_runner(store, client, clock, cursor=cursor)
    poll(runner)
    poll(runner)

    assert api.sent("updated_since") == [str(T0 - 3600), str(T0 - 70)]


def test_token_cursor_sends_no_time(store: Store, api: FakeApi, client, clock) -> None:
    """A token cursor lists without a time parameter, and repeats are not stored."""
    api.add(1, iso(T0 - 10))
    runner = make_runner(store, client, clock, cursor={"kind": "token"})
    poll(runner)
    report = poll(runner)

    assert api.sent("updated_since") == [None, None]
    assert report.already == 1
    assert logged(store) == Counter({"1": 1})


def test_reconcile_sends_until(store: Store, api: FakeApi, client, clock) -> None:
    """A reconcile window sends until_param, rounded up to the unit."""
    cursor = {
        "kind": "timestamp",
        "param": "updated_since",
        "until_param": "updated_before",
    }
    runner = make_runner(store, client, clock, cursor=cursor)
    since = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    until = datetime(2024, 5, 1, 10, 0, 0, 1500, tzinfo=UTC)
    report = runner.reconcile(since=since, until=until)

    assert report.ok
    assert api.sent("updated_before") == ["2024-05-01T10:00:00.002Z"]


# Late, equal-time and millisecond rows


def test_equal_timestamp_late_row(store: Store, api: FakeApi, client, clock) -> None:
    """Two rows at the cursor's time are logged once each though one came late."""
    api.add("A", "2024-05-01T10:00:00Z")
    runner = make_runner(store, client, clock)
    first = poll(runner)
    api.add("B", "2024-05-01T10:00:00Z")
    clock.now += 30
    second = poll(runner)

    assert first.new == 1
    assert second.new == 1
    assert second.already == 1
    assert logged(store) == Counter({"A": 1, "B": 1})


def test_late_visible_event(store: Store, api: FakeApi, client, clock) -> None:
    """An event older than one already polled is logged after it becomes visible."""
    clock.now = T0 + 10
    api.add("evt_B", iso(T0 + 9))
    runner = make_runner(store, client, clock)
    poll(runner)
    clock.now = T0 + 12
    api.add("evt_A", iso(T0 + 8))
    report = poll(runner)

    assert report.new == 1
    assert logged(store) == Counter({"evt_A": 1, "evt_B": 1})


def test_millisecond_cursor(store: Store, api: FakeApi, client, clock) -> None:
    """The cursor keeps milliseconds, a later row arrives, nothing repeats."""
    clock.now = datetime(2022, 1, 28, 10, 31, tzinfo=UTC).timestamp()
    api.add("r1", "2022-01-28T10:30:33.614Z")
    runner = make_runner(store, client, clock, start_from="2022-01-28T10:00:00Z")
    poll(runner)
    high_water = cursor_state(store)["high_water"]
    api.add("r2", "2022-01-28T10:30:33.900Z")
    clock.now += 30
    second = poll(runner)
    clock.now += 30
    third = poll(runner)

    assert high_water == "2022-01-28T10:30:33.614000Z"
    assert api.sent("updated_since")[1] == "2022-01-28T10:29:33.614Z"
    assert second.new == 1
    assert third.new == 0
    assert logged(store) == Counter({"r1": 1, "r2": 1})


def test_items_missing_fails_run(store: Store, api: FakeApi, client, clock) -> None:
    """A response without the items field fails the poll and keeps the cursor."""
    api.add(1, iso(T0 - 10))
    runner = make_runner(store, client, clock)
    poll(runner)
    before = cursor_state(store)
    api.envelope = "results"
    api.add(2, iso(T0 - 5))
    clock.now += 30
    report = poll(runner)

    assert not report.ok
    assert "has no 'data' field" in str(report.error)
    assert cursor_state(store) == before
    assert logged(store) == Counter({"1": 1})


def test_items_missing_raises() -> None:
    """parse_page raises ResponseError naming the items key and the keys found."""
    connector = make_connector(items="result.items")
    body = {"result": {"rows": []}}
    with pytest.raises(
        ResponseError,
        match=r"no 'result\.items' field \('result' is an object with keys rows\)",
    ):
        connector.parse_page("events", PageRequest("/v1/items"), response(body))


def test_items_not_array_raises() -> None:
    """An items field that is not an array raises ResponseError."""
    connector = make_connector()
    with pytest.raises(ResponseError, match="not an array of items"):
        connector.parse_page("events", PageRequest("/v1/items"), response({"data": 3}))


def test_item_without_id_set_aside() -> None:
    """An item without its id field is set aside with the reason; others stay."""
    connector = make_connector()
    body = {"data": [{"updated_at": iso(T0)}, {"id": "t_2", "updated_at": iso(T0)}]}
    page = connector.parse_page("events", PageRequest("/v1/items"), response(body))
    assert [record.key for record in page.records] == ["t_2"]
    assert len(page.rejected) == 1
    assert "no string or integer 'id'" in page.rejected[0][1]


# Records and keys


def test_record_entity_version_key() -> None:
    """With version_field the key is the id and the version instant."""
    connector = make_connector(version_field="updated_at")
    record = connector.listing.record(
        {"id": 7, "updated_at": "2024-05-01T12:00:00+02:00"}, "{}"
    )
    assert record.key == "7:2024-05-01T10:00:00.000000Z"


@pytest.mark.parametrize(
    ("time_format", "value"),
    [
        ("iso8601", "2024-05-01T10:00:00Z"),
        ("iso8601", "2024-05-01T10:00:00+00:00"),
        ("iso8601", "2024-05-01T10:00:00.000Z"),
        ("epoch_seconds", T0),
        ("epoch_seconds", str(T0)),
        ("epoch_millis", T0 * 1000),
    ],
)
def test_time_forms_equal(time_format: str, value: Any) -> None:
    """Z, +00:00 and epoch forms of one instant give one time and one version."""
    connector = make_connector(version_field="updated_at", time_format=time_format)
    record = connector.listing.record({"id": 7, "updated_at": value}, "{}")
    assert record.occurred_at == datetime.fromtimestamp(T0, UTC)
    assert record.key == "7:2024-05-01T10:00:00.000000Z"


def test_version_counter_key() -> None:
    """An integer version field gives ``<id>:<counter>``."""
    connector = make_connector(version_field="meta.revision")
    record = connector.listing.record(
        {"id": "t_1", "updated_at": iso(T0), "meta": {"revision": 12}}, "{}"
    )
    assert record.key == "t_1:12"


def test_type_field_read() -> None:
    """A dotted type_field reads the event type from each item."""
    connector = make_connector(type=None, type_field="event.name")
    record = connector.listing.record(
        {"id": 1, "updated_at": iso(T0), "event": {"name": "ticket.closed"}}, "{}"
    )
    assert record.type == "ticket.closed"


def test_type_field_missing() -> None:
    """An item without the default 'type' field is rejected with the fix."""
    connector = make_connector(type=None)
    with pytest.raises(ValueError, match="set type_field"):
        connector.listing.record({"id": 1, "updated_at": iso(T0)}, "{}")


def test_big_integer_id_exact() -> None:
    """A 64-bit integer id keeps every digit in the key."""
    connector = make_connector()
    body = (
        b'{"data": [{"id": 820982911946154508, "updated_at": "2024-05-01T10:00:00Z"}]}'
    )
    page = connector.parse_page(
        "events",
        PageRequest("/v1/items"),
        httpx.Response(200, content=body, request=httpx.Request("GET", API)),
    )
    assert page.records[0].key == "820982911946154508"


def test_naive_time_rejected() -> None:
    """A time without an offset is rejected, not guessed."""
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time_value("2024-05-01T10:00:00", "iso8601")


def test_number_needs_epoch_format() -> None:
    """A number with time_format 'iso8601' is rejected with the epoch formats."""
    with pytest.raises(ValueError, match="epoch_seconds"):
        parse_time_value(T0, "iso8601")


def test_millis_exact() -> None:
    """Epoch milliseconds keep their exact millisecond."""
    moment = parse_time_value(1643365833614, "epoch_millis")
    assert moment.microsecond == 614000


@pytest.mark.parametrize(
    ("time_format", "round_up", "expected"),
    [
        ("iso8601", False, "2024-05-01T10:00:00.001Z"),
        ("iso8601", True, "2024-05-01T10:00:00.002Z"),
        ("epoch_seconds", False, str(T0)),
        ("epoch_seconds", True, str(T0 + 1)),
        ("epoch_millis", False, str(T0 * 1000 + 1)),
    ],
)
def test_format_time_rounds(time_format: str, round_up: bool, expected: str) -> None:
    """Query times round down for a start and up for an end."""
    moment = datetime(2024, 5, 1, 10, 0, 0, 1500, tzinfo=UTC)
    assert format_time(moment, time_format, round_up) == expected  # type: ignore[arg-type]


def test_format_time_whole_second() -> None:
    """A whole-second ISO time is written without a fraction."""
    moment = datetime.fromtimestamp(T0, UTC)
    assert format_time(moment, "iso8601") == "2024-05-01T10:00:00Z"


def test_version_text_tag() -> None:
    """A version that is not a time is kept as written."""
    assert version_text("W/abc") == "W/abc"


# Requests and authentication


def test_first_request_params() -> None:
    """The first request carries extra params, the window start and page size."""
    connector = make_connector(params={"state": "all", "archived": False})
    since = datetime.fromtimestamp(T0, UTC)
    request = connector.first_request("events", Window(since=since, until=None))
    assert request.params == (
        ("state", "all"),
        ("archived", "false"),
        ("updated_since", "2024-05-01T10:00:00Z"),
        ("limit", "2"),
    )


def test_api_key_header(store: Store, api: FakeApi, client, clock) -> None:
    """auth_header and auth_format build the header sent with each request."""
    runner = make_runner(
        store, client, clock, auth_header="X-Api-Key", auth_format="{token}"
    )
    poll(runner)
    assert api.requests[0].headers["x-api-key"] == TOKEN


def test_bearer_header_default() -> None:
    """Without auth keys the token is sent as a Bearer Authorization header."""
    assert make_connector().auth_headers() == {"Authorization": f"Bearer {TOKEN}"}


# Webhooks


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"x-signature": f"sha256={digest}"}


def webhook_settings() -> dict[str, Any]:
    return {
        "webhook_secret": WEBHOOK_SECRET,
        "webhook": {"kind": "hmac", "header": "X-Signature", "prefix": "sha256="},
        "webhook_item": "data",
        "webhook_type_field": "event",
        "version_field": "updated_at",
    }


def test_webhook_and_poll_one_entry(store: Store, api: FakeApi, client, clock) -> None:
    """A webhook and a poll of one resource version make one log entry."""
    runner = make_runner(store, client, clock, **webhook_settings())
    connector = runner.connector
    body = json.dumps(
        {
            "event": "item.updated",
            "data": {"id": 7, "updated_at": "2024-05-01T10:00:00+00:00"},
        }
    ).encode()
    connector.verify_webhook(signed(body), body, T0)
    records = connector.parse_webhook(signed(body), body)
    with store.session() as session:
        record_events(session, NAME, "webhook", records, datetime.now(UTC))
    api.add(7, "2024-05-01T10:00:00Z")
    report = poll(runner)

    assert records[0].type == "item.updated"
    assert report.already == 1
    assert logged(store) == Counter({"7:2024-05-01T10:00:00.000000Z": 1})


def test_webhook_bad_signature() -> None:
    """A webhook signed with another secret is rejected."""
    connector = make_connector(**webhook_settings())
    body = b'{"event": "item.updated", "data": {"id": 7}}'
    with pytest.raises(SignatureError, match="does not match"):
        connector.verify_webhook({"x-signature": "sha256=00"}, body, T0)


def test_webhook_item_missing() -> None:
    """A webhook body without webhook_item raises PayloadError."""
    connector = make_connector(**webhook_settings())
    with pytest.raises(PayloadError, match="no 'data' field"):
        connector.parse_webhook({}, b'{"event": "item.updated"}')


def test_webhooks_off_rejects() -> None:
    """Without webhook_secret every webhook is rejected."""
    with pytest.raises(SignatureError, match="webhooks are off"):
        make_connector().verify_webhook({}, b"{}", T0)


# Configuration


def test_config_errors_listed() -> None:
    """Every invalid key is listed with its key path and the fix."""
    settings = table(
        id_fild="id",
        type_field="kind",
        cursor={"kind": "timestamp", "param": "since", "format": "rfc3339"},
        pagination={"kind": "page_number"},
    )
    del settings["id_field"]
    problems = parse_problems(settings)
    where = f"providers.{NAME}"

    assert f"{where}.id_field: required key is missing" in problems
    assert f"{where}.id_fild: unknown key; remove it or check its spelling" in problems
    assert (
        f"{where}.cursor.format: Input should be 'iso8601', 'epoch_seconds' or "
        "'epoch_millis' (got 'rfc3339')"
    ) in problems
    assert (
        f"{where}.type: set type_field (a field of each item) or type (one fixed "
        "type for every item), not both"
    ) in problems
    assert f"{where}.pagination.page_param: required when kind = 'page_number'" in (
        problems
    )
    assert len(problems) == 5


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"path": "https://api.example.com/v1"}, "path: invalid path"),
        ({"path": "/v1/items?state=all"}, "path: invalid path"),
        ({"auth_format": "Bearer"}, "auth_format: 'Bearer' must contain {token}"),
        ({"items": "data..rows"}, "items: invalid field path"),
        ({"cursor": {"kind": "token", "param": "x"}}, "cursor.param: a token cursor"),
        ({"cursor": {"kind": "id"}}, "cursor.param: required when kind = 'id'"),
        ({"pagination": {"kind": "id"}}, "pagination: kind = 'id' sends"),
        ({"pagination": {"kind": "pages"}}, "pagination.kind: Input should be"),
        (
            {"pagination": {"kind": "link", "first_page": 1}},
            "pagination.first_page: applies only to kind = 'page_number'",
        ),
    ],
)
def test_config_option_invalid(overrides: dict[str, Any], problem: str) -> None:
    """Each invalid option is reported at its key path."""
    problems = parse_problems(table(**overrides))
    assert len(problems) == 1
    assert problems[0].startswith(f"providers.{NAME}.{problem}")


def load_problems(settings: dict) -> list[str]:
    """Return the problems config.parse lists for one provider table."""
    with pytest.raises(ConfigError) as caught:
        config.parse({"providers": {NAME: settings}})
    return caught.value.problems


def test_check_secret_without_webhook() -> None:
    """A webhook_secret without a webhook table is a problem at 'webhook'."""
    (problem,) = load_problems(table(webhook_secret=WEBHOOK_SECRET))
    assert problem.startswith(f"providers.{NAME}.webhook: ")


def test_check_bad_standard_secret() -> None:
    """A Standard Webhooks secret that is not base64 is a webhook_secret problem."""
    settings = table(webhook_secret="whsec_!!!!", webhook={"kind": "standard-webhooks"})
    (problem,) = load_problems(settings)
    assert problem.startswith(f"providers.{NAME}.webhook_secret: ")


def test_check_missing_api_base_url() -> None:
    """A rest provider without api_base_url is a problem at that key."""
    settings = table()
    del settings["api_base_url"]
    (problem,) = load_problems(settings)
    assert problem.startswith(f"providers.{NAME}.api_base_url: ")


def test_id_pagination_not_increasing() -> None:
    """An id page whose last id does not increase raises ResponseError."""
    connector = make_connector(
        cursor={"kind": "id", "param": "since_id"}, pagination={"kind": "id"}
    )
    request = PageRequest("/v1/items", (("since_id", "10"),))
    body = {
        "data": [{"id": 12, "updated_at": iso(T0)}, {"id": 9, "updated_at": iso(T0)}]
    }
    with pytest.raises(ResponseError, match="not greater than the '10' just sent"):
        connector.parse_page("events", request, response(body))
