"""The last rate-limit state a provider's requests saw, kept for ``syncd status``.

The budget that delays requests lives in the daemon's memory (see
``syncd.pacing``). So that ``syncd status``, a separate process, can show it,
the fetcher's view of it is saved with each committed listing page, and once
more when a listing run fails. It is kept as JSON in the provider's
``@rate_limit`` row of the cursors table: rows whose listing starts with
``@`` hold provider-wide state, not a listing's position.

The saved state has these keys, each present only when known:
``observed_at``, ``remaining``, ``limit`` and ``reset_at`` from the last
response with an ``X-RateLimit-Remaining`` header, and ``blocked_until`` with
``reason`` while the credential's budget delays requests. Times are ISO 8601
UTC text.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from syncd.errors import ProviderError, StoreUnavailableError
from syncd.models import Cursor
from syncd.units import to_utc_iso

if TYPE_CHECKING:
    from connectors.base import PageRequest
    from syncd.fetch import Fetcher
    from syncd.store import Store

log = logging.getLogger(__name__)

RATE_LIMIT_LISTING = "@rate_limit"

# X-RateLimit-Reset values below this are read as seconds from now, larger
# ones as Unix time (GitHub sends Unix time; 1e9 seconds is in 2001).
_EPOCH_THRESHOLD = 1e9
# Larger reset values (after the year 5000) are ignored as unreadable.
_MAX_RESET = 1e11


def read_rate_limit_headers(response: httpx.Response, now: float) -> dict[str, Any]:
    """Return the ``X-RateLimit-*`` figures of a response, or {} if it has none.

    ``now`` is Unix time. Unreadable header values are left out.
    """
    headers = response.headers
    remaining = _integer(headers.get("x-ratelimit-remaining"))
    if remaining is None:
        return {}
    figures: dict[str, Any] = {"observed_at": _iso(now), "remaining": remaining}
    limit = _integer(headers.get("x-ratelimit-limit"))
    if limit is not None:
        figures["limit"] = limit
    reset = _number(headers.get("x-ratelimit-reset"))
    if reset is not None:
        figures["reset_at"] = _iso(reset if reset >= _EPOCH_THRESHOLD else now + reset)
    return figures


def blocked_state(wait_seconds: float, reason: str, now: float) -> dict[str, Any]:
    """Return the ``blocked_until`` and ``reason`` keys of a wait, or {} if none."""
    if wait_seconds <= 0:
        return {}
    return {"blocked_until": _iso(now + wait_seconds), "reason": reason}


def save_rate_limit(
    session: Session, provider: str, state: dict[str, Any] | None, now: datetime
) -> None:
    """Store a provider's rate-limit state inside the caller's transaction.

    Does nothing for an empty state, so the last known state stays. The row
    is written with an upsert because the poll and reconcile runs of one
    provider may save it at the same time.
    """
    if not state:
        return
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(Cursor).values(
        provider=provider,
        listing=RATE_LIMIT_LISTING,
        state=json.dumps(state, sort_keys=True),
        updated_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["provider", "listing"],
        set_={
            "state": statement.excluded.state,
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(statement)


def load_rate_limit(session: Session, provider: str) -> dict[str, Any] | None:
    """Return a provider's saved rate-limit state, or None if none was saved."""
    row = session.get(Cursor, (provider, RATE_LIMIT_LISTING))
    return json.loads(row.state) if row is not None else None


def fetch_keeping_rate_limit(
    store: Store,
    fetcher: Fetcher,
    request: PageRequest,
    validators: dict[str, str] | None,
    now: datetime,
) -> httpx.Response:
    """Call ``fetcher.fetch``; when it raises ProviderError, save the state first.

    A run that ends on a rate limit commits no page, so its wait would not be
    saved otherwise. A database error while saving is logged, and the
    provider's error is raised.
    """
    try:
        return fetcher.fetch(request, validators)
    except ProviderError:
        provider = fetcher.connector.provider.name
        try:
            with store.session() as session:
                save_rate_limit(session, provider, fetcher.rate_limit_state(), now)
        except StoreUnavailableError as exc:
            log.warning("%s: rate-limit state not saved: %s", provider, exc)
        raise


def clear_passed_block(store: Store, fetcher: Fetcher, now: datetime) -> None:
    """Drop a saved ``blocked_until`` after a run whose requests all succeeded.

    The provider returned success, so the wait that it requested earlier no
    longer applies, and ``syncd status`` stops showing it. A wait that the
    budget still enforces is kept. A database error is only logged, because
    the state is displayed, not used to pace requests.
    """
    if fetcher.budget.wait_time() > 0:
        return
    provider = fetcher.connector.provider.name
    try:
        with store.session() as session:
            row = session.get(Cursor, (provider, RATE_LIMIT_LISTING))
            state = json.loads(row.state) if row is not None else {}
            if row is None or "blocked_until" not in state:
                return
            state.pop("blocked_until")
            state.pop("reason", None)
            row.state = json.dumps(state, sort_keys=True)
            row.updated_at = now
    except StoreUnavailableError as exc:
        log.warning("%s: rate-limit state not updated: %s", provider, exc)


def _iso(moment: float) -> str:
    return to_utc_iso(datetime.fromtimestamp(moment, UTC))


def _integer(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or not 0 <= number < _MAX_RESET:
        return None
    return number
