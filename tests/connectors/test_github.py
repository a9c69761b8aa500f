"""Tests of the GitHub connector: signatures, webhook bodies, keys and listings."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from connectors.base import Page, PageRequest, Window
from connectors.github import GitHubConnector, since_param, version_text
from syncd import config
from syncd.daemon import Daemon
from syncd.errors import ConfigError, PayloadError, ResponseError, SignatureError
from syncd.fetch import Fetcher
from syncd.models import Event
from syncd.reconcile import ProviderRunner
from syncd.runtime import Runtime
from syncd.store import Store, load_cursor
from tests.connectors.github_sim import SimulatedGitHub
from tests.e2e.support import T0, FakeClock

FIXTURES = Path(__file__).parents[1] / "fixtures" / "github"
WEBHOOKS = FIXTURES / "webhooks"
INDEX = json.loads((WEBHOOKS / "index.json").read_text("utf-8"))["files"]
VECTORS = json.loads((FIXTURES / "signature-vectors.json").read_text("utf-8"))
PAGINATE = (
    FIXTURES / "api" / "octokit-fixtures" / "paginate-issues.normalized-fixture.json"
)

TOKEN = "ghp_test_token_0001"
SECRET = "github-webhook-secret"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
REPO = "codertocat/hello-world"
SIM_REPO = "Octo-Org/Octo-Repo"

# The keys each copied payload must produce, in order.
EXPECTED_KEYS = {
    "issue_comment/created.payload.json": [
        "comment:492700400:2019-05-15T15:20:21Z",
        f"issue:{REPO}#1:2019-05-15T15:20:21Z",
    ],
    "issue_comment/created.with-installation.payload.json": [
        "comment:492700400:2019-05-15T15:20:21Z",
        f"issue:{REPO}#1:2019-05-15T15:20:21Z",
    ],
    "issue_comment/deleted.payload.json": [
        "comment:492700400:deleted",
        f"issue:{REPO}#1:2019-05-15T15:20:22Z",
    ],
    "issue_comment/edited.payload.json": [
        "comment:492700400:2019-05-15T15:20:22Z",
        f"issue:{REPO}#1:2019-05-15T15:20:22Z",
    ],
    "issues/assigned.with-installation.payload.json": [
        f"issue:{REPO}#1:2019-05-15T15:20:18Z"
    ],
    "issues/deleted.payload.json": [f"issue:{REPO}#1:deleted"],
    "issues/edited.payload.json": [f"issue:{REPO}#1:2019-05-15T15:20:18Z"],
    "issues/labeled.payload.json": [f"issue:{REPO}#1:2019-05-15T15:20:18Z"],
    "issues/opened.payload.json": [f"issue:{REPO}#1:2019-05-15T15:20:18Z"],
    "issues/opened.with-empty-body.payload.json": [
        f"issue:{REPO}#1:2019-05-15T15:20:18Z"
    ],
    "issues/reopened.payload.json": [f"issue:{REPO}#1:2021-10-11T16:40:56Z"],
    "ping/payload.json": [],
    "ping/with-app_id.payload.json": [],
    "pull_request/closed.payload.json": [f"pull:{REPO}#2:2019-05-15T15:21:18Z"],
    "pull_request/opened.payload.json": [f"pull:{REPO}#2:2019-05-15T15:20:33Z"],
    "pull_request/synchronize.payload.json": [f"pull:{REPO}#2:2019-05-15T15:20:33Z"],
    "push/payload.json": [f"delivery:{DELIVERY}"],
    "push/with-new-branch.payload.json": [f"delivery:{DELIVERY}"],
}


def make_connector(**table: Any) -> GitHubConnector:
    settings: dict[str, Any] = {
        "connector": "github",
        "repositories": ["Codertocat/Hello-World"],
        "api_token": TOKEN,
        "webhook_secret": SECRET,
    }
    settings.update(table)
    settings = {key: value for key, value in settings.items() if value is not None}
    parsed = config.parse({"providers": {"code": settings}})
    return GitHubConnector(parsed.providers["code"])


def payload_bytes(name: str) -> bytes:
    return (WEBHOOKS / name).read_bytes()


def payload(name: str) -> dict[str, Any]:
    return json.loads(payload_bytes(name))


def webhook_headers(event: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "x-github-event": event,
        "x-github-delivery": DELIVERY,
        "x-hub-signature-256": f"sha256={digest}",
    }


def list_response(
    items: list[Any], link: str | None = None, url: str = "https://api.github.com/"
) -> httpx.Response:
    headers = {"content-type": "application/json; charset=utf-8"}
    if link is not None:
        headers["link"] = f'<{link}>; rel="next"'
    return httpx.Response(
        200,
        content=json.dumps(items).encode(),
        headers=headers,
        request=httpx.Request("GET", url),
    )


def parse_listed(connector: GitHubConnector, kind: str, items: list[Any]) -> Page:
    listing = f"{kind}:{REPO}"
    request = connector.first_request(listing, Window(since=None, until=None))
    return connector.parse_page(listing, request, list_response(items))


def logged(store: Store) -> list[Event]:
    with store.session() as session:
        return list(session.execute(select(Event)).scalars())


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected retry wait of {seconds}s")


# Signatures


def test_vectors_include_valid_and_invalid() -> None:
    """The copied vector file contains both valid and invalid GitHub vectors."""
    expected = {vector["expected"] for vector in VECTORS["vectors"]}
    assert expected == {"valid", "invalid"}


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["id"])
def test_verify_vector(vector: dict[str, Any]) -> None:
    """Each GitHub vector verifies or fails as its ``expected`` field specifies."""
    connector = make_connector(webhook_secret=vector["secret"])
    headers = {name.lower(): value for name, value in vector["headers"].items()}
    body = vector["body"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == vector["body_sha256"]

    if vector["expected"] == "valid":
        connector.verify_webhook(headers, body, T0)
    else:
        with pytest.raises(SignatureError):
            connector.verify_webhook(headers, body, T0)


def test_verify_real_payload_and_changed_byte() -> None:
    """A signed fixture body verifies, and one changed byte is rejected."""
    connector = make_connector()
    body = payload_bytes("issues/opened.payload.json")
    headers = webhook_headers("issues", body)
    connector.verify_webhook(headers, body, T0)

    changed = body.replace(b'"opened"', b'"closed"', 1)
    with pytest.raises(SignatureError, match="does not match"):
        connector.verify_webhook(headers, changed, T0)


def test_verify_missing_header_rejected() -> None:
    """A request without X-Hub-Signature-256 is rejected, naming the header."""
    connector = make_connector()
    with pytest.raises(SignatureError, match="missing X-Hub-Signature-256"):
        connector.verify_webhook({"x-github-event": "push"}, b"{}", T0)


def test_verify_sha1_signature_rejected() -> None:
    """The legacy SHA-1 signature alone is not accepted."""
    connector = make_connector()
    body = b'{"zen": "x"}'
    sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    with pytest.raises(SignatureError):
        connector.verify_webhook({"x-hub-signature": f"sha1={sha1}"}, body, T0)


def test_verify_webhooks_off_rejected() -> None:
    """A provider without webhook_secret rejects every webhook."""
    connector = make_connector(webhook_secret=None)
    body = b"{}"
    with pytest.raises(SignatureError, match="webhooks are off"):
        connector.verify_webhook(webhook_headers("push", body), body, T0)


# Webhook bodies


def test_expected_keys_cover_every_fixture() -> None:
    """The expected-key table names every copied webhook payload."""
    assert set(EXPECTED_KEYS) == {entry["file"] for entry in INDEX}


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_parse_fixture_keys(entry: dict[str, Any]) -> None:
    """Each copied payload parses into the expected keys."""
    body = payload_bytes(entry["file"])
    headers = webhook_headers(entry["x_github_event"], body)
    records = make_connector().parse_webhook(headers, body)
    assert [record.key for record in records] == EXPECTED_KEYS[entry["file"]]


@pytest.mark.parametrize("entry", INDEX, ids=lambda e: e["file"])
def test_parse_fixture_type_and_payload(entry: dict[str, Any]) -> None:
    """Each record has type event.action and keeps the body text exactly."""
    body = payload_bytes(entry["file"])
    headers = webhook_headers(entry["x_github_event"], body)
    records = make_connector().parse_webhook(headers, body)
    event, action = entry["x_github_event"], entry["action"]
    expected_type = f"{event}.{action}" if action else event
    for record in records:
        assert record.type == expected_type
        assert record.payload == body.decode("utf-8")


def test_parse_issue_occurred_at() -> None:
    """An issue webhook's occurred_at is the issue's updated_at."""
    body = payload_bytes("issues/edited.payload.json")
    records = make_connector().parse_webhook(webhook_headers("issues", body), body)
    assert records[0].occurred_at == datetime(2019, 5, 15, 15, 20, 18, tzinfo=UTC)


def test_parse_push_occurred_at() -> None:
    """A push webhook's occurred_at is the repository's pushed_at."""
    body = payload_bytes("push/payload.json")
    records = make_connector().parse_webhook(webhook_headers("push", body), body)
    assert records[0].occurred_at == datetime.fromtimestamp(1557933657, UTC)


def test_parse_rejects_invalid_json() -> None:
    """A body that is not JSON is a PayloadError."""
    with pytest.raises(PayloadError, match="not valid JSON"):
        make_connector().parse_webhook({"x-github-event": "issues"}, b"{nope")


def test_parse_rejects_missing_event_header() -> None:
    """A webhook without X-GitHub-Event is a PayloadError."""
    with pytest.raises(PayloadError, match="X-GitHub-Event"):
        make_connector().parse_webhook({}, b"{}")


def test_parse_rejects_push_without_delivery() -> None:
    """A push without X-GitHub-Delivery has no key and is rejected."""
    body = payload_bytes("push/payload.json")
    with pytest.raises(PayloadError, match="X-GitHub-Delivery"):
        make_connector().parse_webhook({"x-github-event": "push"}, body)


def test_parse_rejects_issue_without_updated_at() -> None:
    """An issues webhook whose issue lacks updated_at is rejected."""
    document = payload("issues/opened.payload.json")
    del document["issue"]["updated_at"]
    body = json.dumps(document).encode()
    with pytest.raises(PayloadError, match="updated_at"):
        make_connector().parse_webhook(webhook_headers("issues", body), body)


def test_parse_keeps_milliseconds() -> None:
    """A fraction of a second in updated_at stays in the key and occurred_at."""
    document = payload("issues/edited.payload.json")
    document["issue"]["updated_at"] = "2022-01-28T10:30:33.614Z"
    body = json.dumps(document).encode()
    record = make_connector().parse_webhook(webhook_headers("issues", body), body)[0]
    assert record.key == f"issue:{REPO}#1:2022-01-28T10:30:33.614Z"
    assert record.occurred_at.microsecond == 614000


# One key for a webhook and the polled object


def test_issue_webhook_matches_polled_issue() -> None:
    """An issues webhook and the listed issue at its updated_at share one key."""
    connector = make_connector()
    body = payload_bytes("issues/edited.payload.json")
    webhook = connector.parse_webhook(webhook_headers("issues", body), body)[0]
    polled = parse_listed(connector, "issues", [json.loads(body)["issue"]])
    assert [record.key for record in polled.records] == [webhook.key]


def test_comment_webhook_matches_polled_comment() -> None:
    """An issue_comment webhook and the listed comment share one key."""
    connector = make_connector()
    body = payload_bytes("issue_comment/edited.payload.json")
    webhook = connector.parse_webhook(webhook_headers("issue_comment", body), body)
    polled = parse_listed(connector, "comments", [json.loads(body)["comment"]])
    assert polled.records[0].key == webhook[0].key


def test_comment_webhook_matches_commented_issue() -> None:
    """The issue an issue_comment webhook carries has the listed issue's key."""
    connector = make_connector()
    body = payload_bytes("issue_comment/created.payload.json")
    webhook = connector.parse_webhook(webhook_headers("issue_comment", body), body)
    polled = parse_listed(connector, "issues", [json.loads(body)["issue"]])
    assert polled.records[0].key == webhook[1].key


def test_pull_webhook_matches_polled_pull() -> None:
    """A pull_request webhook and the listed pull request share one key."""
    connector = make_connector()
    body = payload_bytes("pull_request/closed.payload.json")
    webhook = connector.parse_webhook(webhook_headers("pull_request", body), body)
    polled = parse_listed(connector, "pulls", [json.loads(body)["pull_request"]])
    assert [record.key for record in polled.records] == [webhook[0].key]


def test_issues_listing_skips_pull_requests() -> None:
    """The issue view of a pull request in /issues gives no record."""
    issue_view = payload("issues/opened.payload.json")["issue"]
    issue_view["pull_request"] = {"url": "https://api.github.com/x/pulls/1"}
    page = parse_listed(make_connector(), "issues", [issue_view])
    assert page.records == []


def test_issue_key_uses_lower_case_repository() -> None:
    """Keys agree when the configured name and the payload differ in case."""
    connector = make_connector(repositories=["CODERTOCAT/hello-world"])
    issue = payload("issues/opened.payload.json")["issue"]
    page = parse_listed(connector, "issues", [issue])
    assert page.records[0].key == f"issue:{REPO}#1:2019-05-15T15:20:18Z"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"closed_at": None}, "issues.opened"),
        ({"updated_at": "2019-05-16T00:00:00Z", "closed_at": None}, "issues.updated"),
        (
            {"updated_at": "2019-05-16T00:00:00Z", "closed_at": "2019-05-16T00:00:00Z"},
            "issues.closed",
        ),
    ],
)
def test_polled_issue_type(fields: dict[str, Any], expected: str) -> None:
    """A listed issue's type states whether it was opened, closed or updated."""
    issue = payload("issues/opened.payload.json")["issue"]
    issue.update(created_at="2019-05-15T15:20:18Z", **fields)
    page = parse_listed(make_connector(), "issues", [issue])
    assert page.records[0].type == expected


# Listings and requests


def test_listings_per_repository() -> None:
    """Every selected listing is polled for every repository."""
    connector = make_connector(
        repositories=["a/one", "B/Two"], listings=["issues", "pulls"]
    )
    assert connector.listings() == [
        "issues:a/one",
        "pulls:a/one",
        "issues:b/two",
        "pulls:b/two",
    ]


def test_first_request_for_issues() -> None:
    """The issues request lists all states newest first from before ``since``."""
    connector = make_connector(page_size=100)
    window = Window(
        since=datetime(2024, 5, 1, 10, 0, 0, 500000, tzinfo=UTC), until=None
    )
    request = connector.first_request(f"issues:{REPO}", window)
    assert request.url == f"/repos/{REPO}/issues"
    assert dict(request.params) == {
        "state": "all",
        "sort": "updated",
        "direction": "desc",
        "per_page": "100",
        "since": "2024-05-01T09:59:59Z",
    }


def test_first_request_for_comments() -> None:
    """The comments request has no state filter and the same order and bound."""
    window = Window(since=datetime(2024, 5, 1, 10, tzinfo=UTC), until=None)
    request = make_connector().first_request(f"comments:{REPO}", window)
    assert request.url == f"/repos/{REPO}/issues/comments"
    assert "state" not in dict(request.params)


def test_enterprise_base_url_keeps_path() -> None:
    """Request URLs on GitHub Enterprise Server keep the /api/v3 prefix."""
    connector = make_connector(api_base_url="https://ghe.example/api/v3")
    request = connector.first_request(f"issues:{REPO}", Window(None, None))
    url = Fetcher(connector, httpx.Client()).url_of(request)
    assert url == f"https://ghe.example/api/v3/repos/{REPO}/issues"


def test_auth_headers() -> None:
    """API requests carry the token, the JSON media type and the API version."""
    assert make_connector().auth_headers() == {
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": "2022-11-28",
    }


def test_next_page_from_link_header() -> None:
    """The Link header's rel=next URL, with its query as params, is the next request."""
    connector = make_connector()
    listing = f"issues:{REPO}"
    request = connector.first_request(listing, Window(None, None))
    link = "https://api.github.com/repositories/1296269/issues?per_page=3&page=2"
    page = connector.parse_page(listing, request, list_response([], link))
    assert page.next == PageRequest(
        url="https://api.github.com/repositories/1296269/issues",
        params=(("per_page", "3"), ("page", "2")),
    )


def pull(number: int, updated_at: str) -> dict[str, Any]:
    return {"id": 100 + number, "number": number, "updated_at": updated_at}


def test_pulls_listing_stops_before_since() -> None:
    """The newest-first pulls listing ends at the first pull request before since."""
    connector = make_connector()
    listing = f"pulls:{REPO}"
    window = Window(since=datetime(2024, 5, 1, 10, tzinfo=UTC), until=None)
    request = connector.first_request(listing, window)
    items = [pull(3, "2024-05-01T11:00:00Z"), pull(2, "2024-05-01T09:00:00Z")]
    page = connector.parse_page(listing, request, list_response(items, "https://x"))
    assert [record.key for record in page.records] == [
        f"pull:{REPO}#3:2024-05-01T11:00:00Z"
    ]
    assert page.next is None


def test_pulls_listing_carries_since() -> None:
    """A pulls next page keeps the since bound that its Link URL lacks."""
    connector = make_connector()
    listing = f"pulls:{REPO}"
    window = Window(since=datetime(2024, 5, 1, 10, tzinfo=UTC), until=None)
    request = connector.first_request(listing, window)
    link = "https://api.github.com/repositories/1/pulls?page=2"
    items = [pull(3, "2024-05-01T11:00:00Z")]
    page = connector.parse_page(listing, request, list_response(items, link))
    assert page.next == PageRequest(
        url="https://api.github.com/repositories/1/pulls",
        params=(("page", "2"), ("since", "2024-05-01T09:59:59Z")),
    )


def test_parse_page_rejects_object() -> None:
    """A listing response that is not an array is a ResponseError."""
    connector = make_connector()
    listing = f"issues:{REPO}"
    request = connector.first_request(listing, Window(None, None))
    response = httpx.Response(
        200,
        json={"message": "x"},
        request=httpx.Request("GET", "https://api.github.com/"),
    )
    with pytest.raises(ResponseError, match="JSON array"):
        connector.parse_page(listing, request, response)


@pytest.mark.parametrize(
    "repository", ["octo-org", "octo-org/", "/repo", "a/b/c", "octo org/repo", "o/.."]
)
def test_options_reject_invalid_repository(repository: str) -> None:
    """An entry that is not owner/repo is a configuration error naming it."""
    with pytest.raises(ConfigError, match="invalid repository"):
        make_connector(repositories=[repository])


def test_options_reject_repeated_repository() -> None:
    """One repository listed twice, in any case, is a configuration error."""
    with pytest.raises(ConfigError, match="listed twice"):
        make_connector(repositories=["a/b", "A/B"])


def test_options_require_repositories() -> None:
    """A GitHub table without repositories is a configuration error."""
    with pytest.raises(ConfigError, match="repositories"):
        make_connector(repositories=None)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2019, 5, 15, 15, 20, 18, tzinfo=UTC), "2019-05-15T15:20:18Z"),
        (
            datetime(2022, 1, 28, 10, 30, 33, 900000, tzinfo=UTC),
            "2022-01-28T10:30:33.900Z",
        ),
        (
            datetime(2022, 1, 28, 10, 30, 33, 123456, tzinfo=UTC),
            "2022-01-28T10:30:33.123456Z",
        ),
    ],
)
def test_version_text_has_one_form(moment: datetime, expected: str) -> None:
    """Version times are written without, in milliseconds or in microseconds."""
    assert version_text(moment) == expected


def test_since_param_floors_and_steps_back() -> None:
    """since is written in whole seconds, one second before the window start."""
    moment = datetime(2022, 1, 28, 10, 30, 33, 614000, tzinfo=UTC)
    assert since_param(moment) == "2022-01-28T10:30:32Z"


# Polls through the core


def recorded_response(entry: dict[str, Any]) -> httpx.Response:
    skipped = {"content-length"}
    headers = {k: str(v) for k, v in entry["headers"].items() if k not in skipped}
    body = json.dumps(entry["response"]).encode()
    return httpx.Response(entry["status"], headers=headers, content=body)


def test_poll_follows_recorded_link_pages(store: Store) -> None:
    """The recorded five-page issues listing is read through its Link headers."""
    recording = json.loads(PAGINATE.read_text("utf-8"))
    connector = make_connector(
        repositories=["octokit-fixture-org/paginate-issues"],
        listings=["issues"],
        page_size=3,
        start_from="2017-10-01T00:00:00Z",
    )
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return recorded_response(recording[int(request.url.params.get("page", 1)) - 1])

    pattern = r"^https://api\.github\.com/(repos/octokit-fixture-org/paginate-issues|repositories/1000)/issues"
    with respx.mock(assert_all_mocked=True) as router, httpx.Client() as client:
        router.get(url__regex=pattern).mock(side_effect=respond)
        runner = ProviderRunner(
            store, connector, client, clock=lambda: T0, sleep=no_sleep
        )
        report = runner.poll()[0]

    assert report.ok
    assert report.pages == 5
    assert [str(r.url) for r in sent[1:]] == [
        f"https://api.github.com/repositories/1000/issues?per_page=3&page={n}"
        for n in range(2, 6)
    ]
    assert dict(sent[0].url.params) == {
        "state": "all",
        "sort": "updated",
        "direction": "desc",
        "per_page": "3",
        "since": "2017-09-30T23:59:59Z",
    }
    assert sent[0].headers["authorization"] == f"Bearer {TOKEN}"
    keys = {entry.key for entry in logged(store)}
    assert keys == {
        f"issue:octokit-fixture-org/paginate-issues#{n}:2017-10-10T16:00:00Z"
        for n in range(1, 14)
    }
    with store.session() as session:
        state = load_cursor(
            session, "code", "issues:octokit-fixture-org/paginate-issues"
        )
    assert state["high_water"] == "2017-10-10T16:00:00.000000Z"


def listed_issue(number: int, updated_at: str) -> dict[str, Any]:
    return {
        "id": 1000 + number,
        "number": number,
        "repository_url": f"https://api.github.com/repos/{REPO}",
        "created_at": "2022-01-28T10:00:00Z",
        "updated_at": updated_at,
        "closed_at": None,
    }


def test_poll_keeps_millisecond_cursor(store: Store) -> None:
    """A cursor keeps milliseconds, a late record arrives, nothing is logged twice."""
    first = listed_issue(1, "2022-01-28T10:30:33.614Z")
    second = listed_issue(2, "2022-01-28T10:30:33.900Z")
    listings = iter([[first], [second, first], [second, first]])
    sent: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return list_response(next(listings))

    connector = make_connector(listings=["issues"], start_from="2022-01-28T10:00:00Z")
    with respx.mock(assert_all_mocked=True) as router, httpx.Client() as client:
        router.get(f"https://api.github.com/repos/{REPO}/issues").mock(
            side_effect=respond
        )
        runner = ProviderRunner(
            store, connector, client, clock=lambda: T0, sleep=no_sleep
        )
        runner.poll()
        with store.session() as session:
            after_first = load_cursor(session, "code", f"issues:{REPO}")
        second_poll = runner.poll()[0]
        third_poll = runner.poll()[0]

    assert after_first["high_water"] == "2022-01-28T10:30:33.614000Z"
    assert sent[1].url.params["since"] == "2022-01-28T10:28:32Z"
    assert second_poll.new == 1
    assert third_poll.new == 0
    entries = {entry.key: entry for entry in logged(store)}
    assert set(entries) == {
        f"issue:{REPO}#1:2022-01-28T10:30:33.614Z",
        f"issue:{REPO}#2:2022-01-28T10:30:33.900Z",
    }
    assert entries[f"issue:{REPO}#2:2022-01-28T10:30:33.900Z"].occurred_at == datetime(
        2022, 1, 28, 10, 30, 33, 900000, tzinfo=UTC
    )
    with store.session() as session:
        state = load_cursor(session, "code", f"issues:{REPO}")
    assert state["high_water"] == "2022-01-28T10:30:33.900000Z"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def simulator(clock: FakeClock) -> Iterator[SimulatedGitHub]:
    """Serve a simulated GitHub repository on a free loopback port."""
    sim = SimulatedGitHub(
        repository=SIM_REPO, token=TOKEN, webhook_secret=SECRET, clock=clock, seed=11
    )
    sim.serve()
    yield sim
    sim.stop()


def sim_connector(simulator: SimulatedGitHub, **table: Any) -> GitHubConnector:
    return make_connector(
        api_base_url=simulator.base_url,
        repositories=[SIM_REPO.lower()],
        start_from="2024-05-01T09:00:00Z",
        max_retry_wait="1s",
        **table,
    )


def test_poll_pages_shifting_skip_nothing(
    store: Store, simulator: SimulatedGitHub, clock: FakeClock
) -> None:
    """An issue updated between pages makes no other issue go unlisted."""
    for _ in range(9):
        clock.advance(1)
        simulator.open_issue()
    before = simulator.current_versions()

    def update_listed_issue(kind: str, page: int, rows: list[dict[str, Any]]) -> None:
        if page == 1:
            clock.advance(1)
            simulator.change_issue(rows[1]["number"], "edited")

    simulator.after_page = update_listed_issue
    connector = sim_connector(simulator, listings=["issues"], page_size=3)
    with httpx.Client(trust_env=False) as client:
        runner = ProviderRunner(store, connector, client, clock=clock, sleep=no_sleep)
        first = runner.poll()[0]
        after_first = {(entry.resource, entry.version) for entry in logged(store)}
        simulator.after_page = None
        second = runner.poll()[0]

    assert first.ok
    assert second.ok
    assert before - after_first == set()
    after_second = {(entry.resource, entry.version) for entry in logged(store)}
    assert simulator.current_versions() - after_second == set()


def test_pull_request_keys_use_pull_view(
    store: Store, simulator: SimulatedGitHub, clock: FakeClock
) -> None:
    """A push moves only the pull view, and the poll logs that version alone."""
    clock.advance(1)
    number = simulator.open_pull()
    clock.advance(5)
    simulator.push_to_pull(number)
    connector = sim_connector(simulator, listings=["issues", "pulls"])
    with httpx.Client(trust_env=False) as client:
        ProviderRunner(store, connector, client, clock=clock, sleep=no_sleep).poll()

    pairs = {(entry.resource, entry.version) for entry in logged(store)}
    assert pairs == simulator.current_versions()
    assert pairs == {(f"pull:{SIM_REPO.lower()}#1", "2024-05-01T10:00:06Z")}


# End to end


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def build_history(simulator: SimulatedGitHub, clock: FakeClock) -> None:
    """Open issues and pull requests, then change them at random for a while."""
    steps = random.Random(4)
    for _ in range(10):
        clock.advance(1)
        simulator.open_issue()
    for _ in range(3):
        clock.advance(1)
        simulator.open_pull()
    for _ in range(90):
        clock.advance(steps.randint(1, 3))
        simulator.random_change()


@pytest.mark.e2e
def test_lossy_webhooks_then_reconcile(
    database_url: str, simulator: SimulatedGitHub, clock: FakeClock
) -> None:
    """With 30% of webhooks dropped, a reconcile leaves exactly the true versions."""
    sock = free_socket()
    listen = f"127.0.0.1:{sock.getsockname()[1]}"
    table = {
        "connector": "github",
        "api_base_url": simulator.base_url,
        "api_token": TOKEN,
        "webhook_secret": SECRET,
        "repositories": [SIM_REPO.lower()],
        "listings": ["issues", "pulls"],
        "page_size": 5,
        "max_retry_wait": "1s",
    }
    settings = config.parse(
        {
            "daemon": {"database": database_url, "listen": listen},
            "providers": {"code": table},
        }
    )
    build_history(simulator, clock)

    daemon = Daemon(Runtime.open(settings, clock=clock), sock=sock)
    thread = daemon.start_in_thread()
    try:
        stats = simulator.deliver(f"http://{listen}/webhooks/code", drop_rate=0.3)
    finally:
        daemon.request_stop()
        thread.join(timeout=30)

    runtime = Runtime.open(settings, clock=clock)
    try:
        with httpx.Client(trust_env=False) as client:
            runner = ProviderRunner(
                runtime.store,
                runtime.connectors["code"],
                client,
                clock=clock,
                sleep=no_sleep,
            )
            since = datetime.fromtimestamp(T0 - 3600, UTC)
            report = runner.reconcile(since=since, trigger="command")
        entries = logged(runtime.store)
    finally:
        runtime.close()

    delivered = {(d.resource, d.version) for d in stats.delivered}
    # A version whose webhook was lost and that a later change replaced is
    # listed nowhere any more, so the truth is what arrived plus what is current.
    truth = delivered | simulator.current_versions()
    pairs = {(entry.resource, entry.version) for entry in entries}
    recovered = {
        (e.resource, e.version) for e in entries if e.first_source == "reconcile"
    }
    assert stats.failed == 0
    assert len(stats.dropped) > 20
    assert report.ok
    assert pairs == truth
    assert len(entries) == len(truth)
    assert recovered == truth - delivered
    assert report.new == len(truth - delivered)
    assert report.new > 0
