"""GitHub: ``X-Hub-Signature-256`` webhooks and the issue, comment and pull listings.

Dedup keys are entity versions, so that a webhook and the polled copy of one
object at one ``updated_at`` are one log entry:

=========================================  =====================================
key                                        written by
=========================================  =====================================
``issue:<owner/repo>#<number>:<time>``     ``issues`` webhooks, the ``issue`` that
                                           other webhooks carry (``issue_comment``),
                                           and the issues listing
``pull:<owner/repo>#<number>:<time>``      ``pull_request`` webhooks, the
                                           ``pull_request`` that other webhooks
                                           carry (reviews), and the pulls listing
``comment:<id>:<time>``                    ``issue_comment`` webhooks and the
                                           issue comments listing
``issue:<owner/repo>#<number>:deleted``,   ``issues.deleted`` and
``comment:<id>:deleted``                   ``issue_comment.deleted`` webhooks only
``delivery:<X-GitHub-Delivery>``           every other webhook (push, release…)
=========================================  =====================================

``<owner/repo>`` is lower-cased because GitHub names are case-insensitive.
``<time>`` is ``updated_at`` in UTC, written ``2019-05-15T15:20:18Z`` with the
fraction of a second kept where GitHub gives one. One webhook can write two
entries: an ``issue_comment`` webhook writes the comment's version and the
version of the issue it carries, because a new comment moves the issue's
``updated_at`` and the issues listing returns that version too.

Pull requests have two views that share the repository and the ``number``.
The issue view (from ``/issues``, with a ``pull_request`` member) has the
issue's ``id`` and ``updated_at``. The pull view (``pull_request`` webhooks,
``/pulls``) has a different ``id`` and its own ``updated_at``, and the two
times can differ for one change. Keys of pull requests therefore use the
pull view only: the issues listing skips pull requests, and the pulls listing
returns the same objects that ``pull_request`` webhooks carry, so both
streams agree on the number and the time. A pull request is not listed at
all when ``pulls`` is left out of ``listings``.

What a reconcile can and cannot recover:

* It recovers the newest version of every issue, pull request and comment
  updated in its window. A version that a lost webhook carried and a later
  change replaced cannot be listed any more, so it stays missing.
* It cannot recover deletions, because the listings just stop returning
  deleted objects, nor ``delivery:`` webhooks, which no listing covers.
* A version written by a change that sends neither an ``issues`` nor an
  ``issue_comment`` webhook is logged by the listing alone and counted as a
  recovered missed webhook although none was lost.
* ``updated_at`` has one-second resolution, so two webhooks about one object
  in the same second have one key; the second is counted as a duplicate.

Polled events get a type that names what happened where the object shows it:
``issues.opened`` when ``created_at`` equals ``updated_at``, ``issues.closed``
when ``closed_at`` does, else ``issues.updated``; likewise
``pull_request.opened`` / ``.closed`` / ``.updated`` and
``issue_comment.created`` / ``.edited``. Webhooks have the type
``<X-GitHub-Event>.<action>``, or the event name alone when it has no action.

Every listing asks for ``direction=desc`` (newest first) and follows the
``Link`` header's ``rel="next"`` page number. An object updated while pages
are read moves to the front, so later pages shift back and repeat an object
instead of skipping one, which ``direction=asc`` would do. The pulls
endpoint has no ``since`` parameter, so that listing ends at the first pull
request older than the window.

GitHub signs only the body, with no timestamp, so replays cannot be rejected
by age. A replayed request has the key of the original and is counted as a
duplicate. The delivery id header is not signed, though, so a replay of a
``delivery:`` body under a new ``X-GitHub-Delivery`` is logged again.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.base import (
    Connector,
    EventRecord,
    Page,
    PageRequest,
    Window,
    dump_json,
    parse_json_body,
)
from connectors.parsing import (
    json_array,
    link_request,
    parse_time,
    read_items,
    version_text,
)
from connectors.signing import hmac_sha256, matches_any
from syncd.errors import PayloadError, SignatureError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-hub-signature-256"
EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"
API_VERSION = "2022-11-28"
MAX_PER_PAGE = 100
MAX_LISTING_NAME = 128  # length of the cursor table's listing column

ListingKind = Literal["issues", "comments", "pulls"]
LISTING_PATHS = {"issues": "issues", "comments": "issues/comments", "pulls": "pulls"}
_OWNER = r"[A-Za-z0-9][A-Za-z0-9_-]{0,38}"
_REPOSITORY = re.compile(rf"^{_OWNER}/[A-Za-z0-9._-]{{1,100}}$")

# issue_record or pull_record: (object, owner/repo, type, payload) -> record
RecordBuilder = Callable[[dict[str, Any], str, str, "str | None"], EventRecord]


class GitHubOptions(BaseModel):
    """Keys of a GitHub provider table beyond the common ones."""

    model_config = ConfigDict(extra="forbid")

    repositories: list[str] = Field(min_length=1)
    listings: list[ListingKind] = Field(
        default=["issues", "comments", "pulls"], min_length=1
    )

    @field_validator("repositories")
    @classmethod
    def _check_repositories(cls, values: list[str]) -> list[str]:
        seen: set[str] = set()
        for value in values:
            name = value.lower()
            if not _REPOSITORY.match(value) or name.rsplit("/", 1)[1] in (".", ".."):
                raise ValueError(
                    f"invalid repository {value!r}: write it as 'owner/repo', "
                    "e.g. 'octo-org/octo-repo'"
                )
            if len(f"comments:{name}") > MAX_LISTING_NAME:
                raise ValueError(
                    f"repository name {value!r} is too long for syncd's cursor "
                    f"names; at most {MAX_LISTING_NAME - 9} characters fit"
                )
            if name in seen:
                raise ValueError(f"repository {value!r} is listed twice")
            seen.add(name)
        return values

    @field_validator("listings")
    @classmethod
    def _check_listings(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"listings {values} name one listing twice")
        return values


class GitHubConnector(Connector):
    """GitHub repository events through webhooks and the REST listings."""

    name = "github"
    default_api_base_url = "https://api.github.com"
    Options = GitHubOptions
    max_page_size = MAX_PER_PAGE

    # Webhooks

    def verify_webhook(
        self, headers: Mapping[str, str], body: bytes, now: float
    ) -> None:
        secret = self.provider.webhook_secret
        if secret is None:
            raise SignatureError("webhooks are off for this provider")
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            raise SignatureError(
                "missing X-Hub-Signature-256 header; set the webhook's secret in "
                "GitHub to this provider's webhook_secret"
            )

        scheme, _, digest = header.partition("=")
        if scheme != "sha256" or not digest:
            raise SignatureError(
                "invalid X-Hub-Signature-256 header: expected 'sha256=' followed "
                "by a hex digest"
            )
        expected = hmac_sha256(secret.get_secret_value().encode(), body).hex()
        if not matches_any(expected, [digest]):
            raise SignatureError(
                "X-Hub-Signature-256 does not match the body; check that "
                "webhook_secret is this webhook's secret"
            )

    def parse_webhook(
        self, headers: Mapping[str, str], body: bytes
    ) -> list[EventRecord]:
        event = headers.get(EVENT_HEADER)
        if not event:
            raise PayloadError("missing X-GitHub-Event header")
        if event == "ping":
            return []
        text, payload = _json_object(body)

        action = payload.get("action")
        kind = f"{event}.{action}" if isinstance(action, str) and action else event
        try:
            records = [_subject_record(event, kind, payload, text, headers)]
        except ValueError as exc:
            raise PayloadError(f"{kind} webhook: {exc}") from None
        records.extend(_carried_records(event, kind, payload, text))
        return records

    # Listings

    def listings(self) -> list[str]:
        return [
            f"{kind}:{repository.lower()}"
            for repository in self.options.repositories
            for kind in self.options.listings
        ]

    def auth_headers(self) -> dict[str, str]:
        headers = super().auth_headers()
        headers["Accept"] = "application/vnd.github+json"
        headers["X-GitHub-Api-Version"] = API_VERSION
        return headers

    def first_request(self, listing: str, window: Window) -> PageRequest:
        kind, repository = _split_listing(listing)
        params = [("sort", "updated"), ("direction", "desc")]
        if kind != "comments":
            params.insert(0, ("state", "all"))
        params.append(("per_page", str(self.provider.page_size)))
        if window.since is not None:
            params.append(("since", since_param(window.since)))
        url = f"/repos/{repository}/{LISTING_PATHS[kind]}"
        return PageRequest(url=url, params=tuple(params))

    def parse_page(
        self, listing: str, request: PageRequest, response: httpx.Response
    ) -> Page:
        kind, repository = _split_listing(listing)
        items = json_array(response)
        records, rejected = read_items(
            items, lambda item, _text: _listed_record(kind, item, repository)
        )
        kept = [record for record in records if record is not None]

        next_url = response.links.get("next", {}).get("url")
        next_request = None if next_url is None else link_request(next_url)
        if kind == "pulls":
            page = _pulls_page(kept, request, next_request)
        else:
            page = Page(records=kept, next=next_request)
        page.rejected.extend(rejected)
        return page


def since_param(since: datetime) -> str:
    """Format a window's start for ``since``: whole seconds, one second early.

    The margin keeps an object updated in the window's first second whether
    GitHub compares ``since`` with ``>`` or ``>=``.
    """
    start = math.floor(since.timestamp()) - 1
    return datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_listing(listing: str) -> tuple[str, str]:
    kind, _, repository = listing.partition(":")
    if kind not in LISTING_PATHS or not repository:
        raise ValueError(f"unknown GitHub listing {listing!r}")
    return kind, repository


def _pulls_page(
    records: list[EventRecord], request: PageRequest, next_request: PageRequest | None
) -> Page:
    """End the newest-first pulls listing at the first pull request before ``since``.

    ``since`` travels with every page request because the pulls endpoint has
    no such parameter and its ``Link`` URLs need not repeat it.
    """
    since = _param(request, "since")
    if since is not None:
        start = parse_time(since, "since")
        in_window = [r for r in records if r.occurred_at >= start]
        if len(in_window) < len(records):
            return Page(records=in_window, next=None)
    if next_request is None or since is None or _param(next_request, "since"):
        return Page(records=records, next=next_request)
    params = (*next_request.params, ("since", since))
    return Page(records=records, next=PageRequest(next_request.url, params))


def _param(request: PageRequest, name: str) -> str | None:
    for key, value in request.params:
        if key == name:
            return value
    return None


# Records


def _subject_record(
    event: str,
    kind: str,
    payload: dict[str, Any],
    text: str,
    headers: Mapping[str, str],
) -> EventRecord:
    """Build the record of the object a webhook is about.

    Raises ValueError naming a missing or invalid field.
    """
    action = payload.get("action")
    if event == "issues":
        issue = _member(payload, "issue")
        if action == "deleted":
            return _deleted_issue_record(issue, _repository_name(payload), kind, text)
        return issue_record(issue, _repository_name(payload), kind, text)
    if event == "issue_comment":
        comment = _member(payload, "comment")
        if action == "deleted":
            return _deleted_comment_record(comment, kind, text)
        return comment_record(comment, kind, text)
    if event == "pull_request":
        pull = _member(payload, "pull_request")
        return pull_record(pull, _repository_name(payload), kind, text)
    return _delivery_record(event, kind, payload, text, headers)


def _carried_records(
    event: str, kind: str, payload: dict[str, Any], text: str
) -> list[EventRecord]:
    """Build records of the issue or pull request versions a webhook carries.

    A carried object without a usable ``number`` or ``updated_at`` is left out
    rather than failing the webhook.
    """
    records = []
    issue = payload.get("issue")
    if event != "issues" and isinstance(issue, dict) and "pull_request" not in issue:
        records.append(_carried(issue_record, issue, payload, kind, text))
    pull = payload.get("pull_request")
    if event != "pull_request" and isinstance(pull, dict):
        records.append(_carried(pull_record, pull, payload, kind, text))
    return [record for record in records if record is not None]


def _carried(
    build: RecordBuilder,
    item: dict[str, Any],
    payload: dict[str, Any],
    kind: str,
    text: str,
) -> EventRecord | None:
    try:
        return build(item, _repository_name(payload), kind, text)
    except ValueError as exc:
        log.debug("not logging the version carried by a %s webhook: %s", kind, exc)
        return None


def _listed_record(kind: str, item: Any, repository: str) -> EventRecord | None:
    """Build the record of one listed object, or None for a skipped one."""
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    if kind == "issues":
        if "pull_request" in item:
            return None  # the pulls listing covers pull requests
        repository = _repository_from_url(item.get("repository_url")) or repository
        return issue_record(item, repository, _listed_type("issues", item), None)
    if kind == "pulls":
        repository = _base_repository(item) or repository
        return pull_record(item, repository, _listed_type("pull_request", item), None)
    return comment_record(item, _listed_comment_type(item), None)


def issue_record(
    issue: dict[str, Any], repository: str, kind: str, payload: str | None
) -> EventRecord:
    """Build the record of one issue version.

    ``payload`` is the webhook body, or None to store the issue object itself.
    """
    resource = f"issue:{repository.lower()}#{_number(issue)}"
    return _version_record(resource, issue, kind, payload)


def pull_record(
    pull: dict[str, Any], repository: str, kind: str, payload: str | None
) -> EventRecord:
    """Build the record of one pull request version, keyed by its pull view."""
    resource = f"pull:{repository.lower()}#{_number(pull)}"
    return _version_record(resource, pull, kind, payload)


def comment_record(
    comment: dict[str, Any], kind: str, payload: str | None
) -> EventRecord:
    """Build the record of one issue comment version."""
    resource = f"comment:{_integer_id(comment)}"
    return _version_record(resource, comment, kind, payload)


def _version_record(
    resource: str, item: dict[str, Any], kind: str, payload: str | None
) -> EventRecord:
    occurred_at, version = _updated_at(item)
    return EventRecord(
        key=f"{resource}:{version}",
        type=kind,
        occurred_at=occurred_at,
        payload=dump_json(item) if payload is None else payload,
        resource=resource,
        version=version,
    )


def _deleted_issue_record(
    issue: dict[str, Any], repository: str, kind: str, payload: str
) -> EventRecord:
    resource = f"issue:{repository.lower()}#{_number(issue)}"
    return _deleted_record(resource, issue, kind, payload)


def _deleted_comment_record(
    comment: dict[str, Any], kind: str, payload: str
) -> EventRecord:
    resource = f"comment:{_integer_id(comment)}"
    return _deleted_record(resource, comment, kind, payload)


def _deleted_record(
    resource: str, item: dict[str, Any], kind: str, payload: str
) -> EventRecord:
    """Build the record of a deletion, which happens once per object.

    A deletion leaves ``updated_at`` as it was, so a version key would collide
    with the object's last change. The webhook carries no deletion time, so
    ``occurred_at`` is that last ``updated_at``.
    """
    occurred_at, _ = _updated_at(item)
    return EventRecord(
        key=f"{resource}:deleted",
        type=kind,
        occurred_at=occurred_at,
        payload=payload,
        resource=resource,
        version="deleted",
    )


def _delivery_record(
    event: str,
    kind: str,
    payload: dict[str, Any],
    text: str,
    headers: Mapping[str, str],
) -> EventRecord:
    delivery = headers.get(DELIVERY_HEADER)
    if not delivery:
        raise ValueError("missing X-GitHub-Delivery header")
    return EventRecord(
        key=f"delivery:{delivery}",
        type=kind,
        occurred_at=_delivery_time(event, payload),
        payload=text,
    )


def _delivery_time(event: str, payload: dict[str, Any]) -> datetime:
    """Return the provider's time of a webhook that no listing covers.

    It is the event's own object's ``updated_at``, ``submitted_at`` or
    ``created_at``, or for ``push`` the repository's ``pushed_at``.
    """
    subject = payload.get(event)
    if isinstance(subject, dict):
        for field in ("updated_at", "submitted_at", "created_at"):
            value = subject.get(field)
            if isinstance(value, str):
                try:
                    return parse_time(value, field)
                except ValueError:
                    break
    repository = payload.get("repository")
    pushed_at = repository.get("pushed_at") if isinstance(repository, dict) else None
    if event == "push" and isinstance(pushed_at, int) and pushed_at > 0:
        return datetime.fromtimestamp(pushed_at, UTC)
    # NOTE: this falls back to the receiving host's clock, not provider time.
    return datetime.now(UTC)


def _listed_type(event: str, item: dict[str, Any]) -> str:
    updated = item.get("updated_at")
    if updated is not None and item.get("created_at") == updated:
        return f"{event}.opened"
    if updated is not None and item.get("closed_at") == updated:
        return f"{event}.closed"
    return f"{event}.updated"


def _listed_comment_type(comment: dict[str, Any]) -> str:
    if comment.get("created_at") == comment.get("updated_at"):
        return "issue_comment.created"
    return "issue_comment.edited"


# Fields


def _json_object(body: bytes) -> tuple[str, dict[str, Any]]:
    text, payload = parse_json_body(body)
    if not isinstance(payload, dict):
        raise PayloadError(f"expected a JSON object, got {type(payload).__name__}")
    return text, payload


def _member(payload: dict[str, Any], name: str) -> dict[str, Any]:
    value = payload.get(name)
    if not isinstance(value, dict):
        raise ValueError(f"missing object {name!r}")
    return value


def _repository_name(payload: dict[str, Any]) -> str:
    repository = payload.get("repository")
    name = repository.get("full_name") if isinstance(repository, dict) else None
    if not isinstance(name, str) or "/" not in name:
        raise ValueError("missing 'repository.full_name'")
    return name


def _repository_from_url(url: Any) -> str | None:
    """Return ``owner/repo`` from an API URL such as ``…/repos/owner/repo``."""
    if not isinstance(url, str):
        return None
    _, found, rest = urlsplit(url).path.partition("/repos/")
    parts = rest.split("/")
    if not found or len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return f"{parts[0]}/{parts[1]}"


def _base_repository(pull: dict[str, Any]) -> str | None:
    base = pull.get("base")
    repository = base.get("repo") if isinstance(base, dict) else None
    name = repository.get("full_name") if isinstance(repository, dict) else None
    return name if isinstance(name, str) and "/" in name else None


def _number(item: dict[str, Any]) -> int:
    number = item.get("number")
    if not isinstance(number, int) or isinstance(number, bool):
        raise ValueError("missing integer 'number'")
    return number


def _integer_id(item: dict[str, Any]) -> int:
    value = item.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("missing integer 'id'")
    return value


def _updated_at(item: dict[str, Any]) -> tuple[datetime, str]:
    """Return an object's ``updated_at`` as an aware time and as key text."""
    value = item.get("updated_at")
    if not isinstance(value, str):
        raise ValueError("missing string 'updated_at'")
    moment = parse_time(value, "updated_at")
    return moment, version_text(moment)
