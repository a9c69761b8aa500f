"""Malformed provider responses during polling, mocked with respx on loopback."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from click.testing import CliRunner
from sqlalchemy import select

from connectors.base import PageRequest
from connectors.stripe import StripeConnector
from syncd import config
from syncd.cli import main
from syncd.errors import ResponseError
from syncd.models import Event, Quarantine
from syncd.polling import check_not_seen
from syncd.queries import provider_status
from syncd.reconcile import ProviderRunner
from syncd.store import Store, load_cursor

T0 = 1714557600  # 2024-05-01T10:00:00Z
API = "http://127.0.0.1:9"
EVENTS_URL = f"{API}/v1/events"
TOKEN = "sk_test_poll_responses_secret"


class Clock:
    """A settable Unix clock for the runner."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def settings(database_url: str) -> config.Config:
    return config.parse(
        {
            "daemon": {"database": database_url},
            "providers": {
                "payments": {
                    "connector": "stripe",
                    "api_base_url": API,
                    "api_token": TOKEN,
                    "max_attempts": 1,
                    "start_from": "2024-05-01T09:00:00Z",
                }
            },
        }
    )


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def runner(store: Store, clock: Clock) -> Iterator[ProviderRunner]:
    provider = settings(store.url).providers["payments"]
    with httpx.Client() as client:
        yield ProviderRunner(
            store, StripeConnector(provider), client, clock=clock, sleep=lambda _: None
        )


def event(event_id: str, created: int = T0 - 60, **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": "invoice.paid",
        "created": created,
        "data": {"object": {"id": "in_1", "object": "invoice"}},
        **fields,
    }


def page(*items: dict[str, Any], has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": list(items), "has_more": has_more}


def cursor(store: Store) -> dict[str, Any]:
    with store.session() as session:
        return load_cursor(session, "payments", "events")


def event_keys(store: Store) -> list[str]:
    with store.session() as session:
        return sorted(session.scalars(select(Event.key)))


def quarantined(store: Store) -> list[Quarantine]:
    with store.session() as session:
        return list(session.scalars(select(Quarantine).order_by(Quarantine.id)))


def poll_once(runner: ProviderRunner, *responses: httpx.Response):
    """Run one poll against the given responses, in order; return its report."""
    with respx.mock(assert_all_called=False) as mock:
        mock.get(EVENTS_URL).mock(side_effect=list(responses))
        (report,) = runner.poll()
    return report


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


BAD_RESPONSES = {
    "html": (
        httpx.Response(
            200,
            text="<html><body>502 Bad Gateway</body></html>",
            headers={"content-type": "text/html"},
        ),
        "(text/html, 41 bytes) is not valid JSON: Expecting value",
    ),
    "truncated": (
        httpx.Response(200, text='{"object": "list", "data": [{"id": "evt_'),
        "is not valid JSON: Unterminated string",
    ),
    "array": (httpx.Response(200, json=[]), "expected a JSON object"),
    "missing_data": (ok({"object": "list", "has_more": False}), "'data' array"),
    "mistyped_data": (ok({"object": "list", "data": {}, "has_more": False}), "'data'"),
    "mistyped_has_more": (ok(page(has_more="no")), "boolean 'has_more'"),  # type: ignore[arg-type]
    "empty_claims_more": (ok(page(has_more=True)), "'data' is empty"),
    "error_object": (
        ok({"error": {"message": "Invalid API Key provided", "type": "invalid"}}),
        "error object: 'Invalid API Key provided'",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
def test_bad_response_fails_run(
    runner: ProviderRunner, store: Store, kind: str
) -> None:
    """A bad response fails the poll with the URL and the reason."""
    poll_once(runner, ok(page(event("evt_1"))))
    response, reason = BAD_RESPONSES[kind]

    report = poll_once(runner, response)

    assert report.error is not None
    assert reason in report.error
    assert f"GET {EVENTS_URL} returned 200" in report.error
    assert TOKEN not in report.error


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
def test_bad_response_keeps_cursor(
    runner: ProviderRunner, store: Store, clock: Clock, kind: str
) -> None:
    """A bad response leaves the cursor as it was and stores nothing."""
    poll_once(runner, ok(page(event("evt_1"))))
    before = cursor(store)
    clock.now += 120

    poll_once(runner, BAD_RESPONSES[kind][0])

    assert cursor(store) == before
    assert event_keys(store) == ["evt_1"]


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
def test_bad_response_retried(
    runner: ProviderRunner, store: Store, clock: Clock, kind: str
) -> None:
    """The run after a bad response lists again and stores what it missed."""
    poll_once(runner, ok(page(event("evt_1"))))
    clock.now += 120
    poll_once(runner, BAD_RESPONSES[kind][0])
    clock.now += 120

    report = poll_once(runner, ok(page(event("evt_2", created=T0 + 30))))

    assert report.ok
    assert event_keys(store) == ["evt_1", "evt_2"]


def test_bad_response_logged(
    runner: ProviderRunner, caplog: pytest.LogCaptureFixture
) -> None:
    """The failed run's log record names the provider, the URL and the reason."""
    caplog.set_level(logging.ERROR, logger="syncd.reconcile")

    poll_once(runner, ok({"error": {"message": "Invalid API Key provided"}}))

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("payments: poll run failed")
    assert EVENTS_URL in messages[0]
    assert "error object" in messages[0]


def test_next_link_loop_fails(runner: ProviderRunner, store: Store) -> None:
    """A next page that repeats a request of the same run fails the run."""
    first = ok(page(event("evt_1"), event("evt_2"), has_more=True))
    again = ok(page(event("evt_2"), has_more=True))

    report = poll_once(runner, first, again, again)

    assert report.error is not None
    assert "pagination loops" in report.error
    assert cursor(store).get("high_water") is None


def test_next_link_loop_names_query(runner: ProviderRunner) -> None:
    """The pagination-loop error shows the repeated request's query parameters."""
    first = ok(page(event("evt_1"), event("evt_2"), has_more=True))
    again = ok(page(event("evt_2"), has_more=True))

    report = poll_once(runner, first, again, again)

    assert report.error is not None
    assert "(/v1/events?" in report.error
    assert "starting_after=evt_2" in report.error


def test_loop_message_hides_credentials() -> None:
    """Parameters named like credentials are masked in the loop message."""
    params = (("api_key", "s3cret"), ("accessToken", "t0ken"), ("page", "2"))
    request = PageRequest("/v2/items", params)
    seen = {request}

    with pytest.raises(ResponseError) as raised:
        check_not_seen("items", request, seen)

    message = str(raised.value)
    assert "/v2/items?api_key=***&accessToken=***&page=2" in message
    assert "s3cret" not in message
    assert "t0ken" not in message


def test_bad_item_quarantined(runner: ProviderRunner, store: Store) -> None:
    """One malformed item is quarantined and the rest of the page is stored."""
    bad = event("evt_bad")
    del bad["type"]

    report = poll_once(runner, ok(page(event("evt_1"), bad, event("evt_2"))))

    assert report.ok
    assert report.quarantined == 1
    assert event_keys(store) == ["evt_1", "evt_2"]
    rows = quarantined(store)
    assert len(rows) == 1
    assert rows[0].provider == "payments"
    assert rows[0].listing == "events"
    assert json.loads(rows[0].item) == bad
    assert "'type'" in rows[0].reason
    assert rows[0].seen_at == datetime.fromtimestamp(T0, UTC)


def test_infinite_number_quarantined(runner: ProviderRunner, store: Store) -> None:
    """An item with 1e999, which JSON cannot write back, is quarantined."""
    items = [json.dumps(event(key)) for key in ("evt_1", "evt_2")]
    bad = json.dumps(event("evt_big", amount=0)).replace(
        '"amount": 0', '"amount": 1e999'
    )
    data = ", ".join([items[0], bad, items[1]])
    text = f'{{"object": "list", "data": [{data}], "has_more": false}}'

    report = poll_once(runner, httpx.Response(200, text=text))

    assert report.ok
    assert report.quarantined == 1
    assert event_keys(store) == ["evt_1", "evt_2"]
    (row,) = quarantined(store)
    assert "evt_big" in row.item


def test_bad_item_advances_cursor(runner: ProviderRunner, store: Store) -> None:
    """A quarantined item does not hold the cursor back."""
    bad = event("evt_bad", created="yesterday")

    poll_once(runner, ok(page(event("evt_1", created=T0 - 30), bad)))

    assert cursor(store)["high_water"] == "2024-05-01T09:59:30.000000Z"


def test_bad_item_counted_once(
    runner: ProviderRunner, store: Store, clock: Clock
) -> None:
    """The same bad item listed by two polls is one row seen twice."""
    bad = event("evt_bad", type=7)
    poll_once(runner, ok(page(bad)))
    clock.now += 60

    poll_once(runner, ok(page(bad)))

    rows = quarantined(store)
    assert len(rows) == 1
    assert rows[0].times_seen == 2
    assert rows[0].last_seen_at == datetime.fromtimestamp(T0 + 60, UTC)


@pytest.mark.parametrize("escape", ["\\u0000", "\\ud800"])
def test_unstorable_item_quarantined(
    runner: ProviderRunner, store: Store, escape: str
) -> None:
    """An item whose id the log cannot store is quarantined, not a failed run."""
    text = json.dumps(page(event("evt_x"), event("evt_1")))
    response = httpx.Response(
        200,
        text=text.replace("evt_x", f"evt{escape}"),
        headers={"content-type": "application/json"},
    )

    report = poll_once(runner, response)

    assert report.ok
    assert event_keys(store) == ["evt_1"]
    assert "contains" in quarantined(store)[0].reason


def test_bad_last_item_pages_on(runner: ProviderRunner, store: Store) -> None:
    """A bad last item with an id still gives the next page's starting_after."""
    bad = event("evt_bad", created=None)
    with respx.mock() as mock:
        route = mock.get(EVENTS_URL).mock(
            side_effect=[
                ok(page(event("evt_1"), bad, has_more=True)),
                ok(page(event("evt_2"))),
            ]
        )
        (report,) = runner.poll()

    assert report.ok
    assert route.calls[1].request.url.params["starting_after"] == "evt_bad"
    assert event_keys(store) == ["evt_1", "evt_2"]


def test_status_counts_quarantine(runner: ProviderRunner, store: Store) -> None:
    """provider_status reports the quarantined count and the latest reason."""
    poll_once(runner, ok(page(event("evt_bad", type=None))))

    status = provider_status(store, "payments", "polling")

    assert status.quarantined == 1
    assert "'type'" in status.latest_quarantined[0]["reason"]


def write_config(directory: Path, database_url: str) -> Path:
    path = directory / "config.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{database_url}"\n\n'
        "[providers.payments]\n"
        'connector = "stripe"\n'
        'api_token = "sk_test_1"\n'
        f'api_base_url = "{API}"\n'
    )
    return path


def test_status_cli_shows_quarantine(tmp_path: Path, clock: Clock) -> None:
    """`syncd status` and `--json` show the quarantined items."""
    # SQLite only: the command leaves its engine open, as a process that exits.
    store = Store(f"sqlite:///{tmp_path / 'status.db'}")
    provider = settings(store.url).providers["payments"]
    with httpx.Client() as client:
        runner = ProviderRunner(store, StripeConnector(provider), client, clock=clock)
        poll_once(runner, ok(page(event("evt_bad", type=None))))
    store.dispose()
    path = write_config(tmp_path, store.url)

    text = CliRunner().invoke(main, ["status", "-c", str(path)])
    data = CliRunner().invoke(main, ["status", "-c", str(path), "--json"])

    assert "QUARANTINED items: 1" in text.output
    provider_data = json.loads(data.output)["providers"][0]
    assert provider_data["quarantined"] == 1


# Clock


def test_poll_window_host_behind(store: Store) -> None:
    """With the host clock 10 minutes behind, polls still cover provider time."""
    clock = Clock(T0 - 600)
    provider = settings(store.url).providers["payments"]
    with httpx.Client() as client:
        runner = ProviderRunner(
            store, StripeConnector(provider), client, clock=clock, sleep=lambda _: None
        )
        first = poll_once(runner, ok(page(event("evt_1", created=T0 + 5))))
        clock.now += 60
        with respx.mock() as mock:
            route = mock.get(EVENTS_URL).mock(
                return_value=ok(page(event("evt_2", created=T0 + 50)))
            )
            (second,) = runner.poll()

    assert first.ok
    assert second.ok
    since = int(route.calls[0].request.url.params["created[gte]"])
    lookback = provider.lookback.total_seconds()
    assert since == T0 + 5 - lookback
    assert since > clock.now - lookback
    assert cursor(store)["high_water"] == "2024-05-01T10:00:50.000000Z"
    assert event_keys(store) == ["evt_1", "evt_2"]
