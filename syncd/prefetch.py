"""Fetch and parse the next pages of a listing while the current one is stored.

A listing run fetches and parses pages on a worker thread while it commits
the page before them. The wait for the provider, the parsing and the
database's work (SQLite and psycopg release the GIL while they run) then
overlap. The worker follows the listing on its own, from each page to the
next, so a slow commit does not hold up the requests, and a slow request
does not hold up the commits.

Requests still go out one at a time and in order, so the fetcher's retries
and rate budget see the same sequence as without the overlap. A page is
fetched only after the page before it was parsed, and it is stored only
after that page's transaction has committed, so a crash still re-reads at
most one page. The worker stays at most ``AHEAD`` pages ahead of the page
being stored: one parsed and waiting, and one being fetched. A run that
fails while storing a page may thus have requested up to two more.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from connectors.base import PageRequest

T = TypeVar("T")

AHEAD = 2  # pages fetched beyond the one being stored, at most

Fetch = Callable[[PageRequest, dict[str, str] | None], T]


class PageFetches(Generic[T]):
    """Fetches a chain of listing pages on a worker thread, ahead of the caller.

    ``fetch`` takes a request and its validators (None for no conditional
    request) and returns what the caller needs of the page. ``follow`` takes
    that result and returns the request of the next page, or None at the
    end. The worker stops following at a request it has already fetched;
    the caller sees the loop and reports it.

    Use it as a context manager: leaving the block stops the worker and
    waits for a fetch still running, so the fetcher is free again when the
    run ends.
    """

    def __init__(
        self, fetch: Fetch[T], follow: Callable[[T], PageRequest | None]
    ) -> None:
        self._fetch = fetch
        self._follow = follow
        self._chain: _Chain[T] | None = None

    def __enter__(self) -> PageFetches[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The pages the worker fetched beyond the caller are not stored,
        # because the run ended before them.
        self._stop_chain()

    def get(self, request: PageRequest, validators: dict[str, str] | None = None) -> T:
        """Return the result for ``request``, fetched ahead or fetched now.

        The first call fetches ``request`` itself and starts the worker at
        the page it points to; later calls take the worker's pages in order.
        A request that is not the worker's next page is fetched now, and the
        worker restarts after it. A fetch that failed raises its error here,
        after the pages before it were returned.
        """
        if self._chain is not None:
            found = self._chain.take(request)
            if found is not None:
                return _result(found)
            self._stop_chain()
        value = self._fetch(request, validators)
        following = self._follow(value)
        if following is not None and following != request:
            self._chain = _Chain(self._fetch, self._follow, request, following)
        return value

    def _stop_chain(self) -> None:
        if self._chain is not None:
            self._chain.stop()
            self._chain = None


def _result(found: tuple[T | None, BaseException | None]) -> T:
    value, error = found
    if error is not None:
        raise error
    return value  # type: ignore[return-value]


class _Chain(Generic[T]):
    """One worker thread that fetches a page, then the page it points to, and on.

    ``fetched`` is the page the caller fetched before ``request``, the
    worker's first page.
    """

    def __init__(
        self,
        fetch: Fetch[T],
        follow: Callable[[T], PageRequest | None],
        fetched: PageRequest,
        request: PageRequest,
    ) -> None:
        self._fetch = fetch
        self._follow = follow
        # Each entry is (request, result, error). One waits in the queue
        # while the worker fetches the next, which waits to be put.
        self._pages: queue.Queue[
            tuple[PageRequest | None, T | None, BaseException | None]
        ] = queue.Queue(maxsize=AHEAD - 1)
        self._stopping = threading.Event()
        self._ended = False  # the caller took the worker's last entry
        self._thread = threading.Thread(
            target=self._run, args=(fetched, request), name="prefetch", daemon=True
        )
        self._thread.start()

    def take(
        self, request: PageRequest
    ) -> tuple[T | None, BaseException | None] | None:
        """Return the next page's result and error, or None if it is not ``request``."""
        if self._ended:
            return None
        fetched, value, error = self._pages.get()
        if fetched is None:  # the worker followed no further
            self._ended = True
            return None
        if fetched != request:
            return None
        self._ended = error is not None  # the worker stopped at the error
        return value, error

    def stop(self) -> None:
        """Stop the worker and wait for the fetch it may be running."""
        self._stopping.set()
        # Taking a waiting page frees a worker blocked on putting the next.
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._pages.get(timeout=0.05)
        self._thread.join()

    def _run(self, first: PageRequest, request: PageRequest) -> None:
        fetched = {first}
        next_request: PageRequest | None = request
        try:
            while next_request is not None and next_request not in fetched:
                if self._stopping.is_set():
                    return
                fetched.add(next_request)
                try:
                    value = self._fetch(next_request, None)
                except BaseException as exc:  # raised by the caller's get
                    self._pages.put((next_request, None, exc))
                    return
                self._pages.put((next_request, value, None))
                next_request = self._follow(value)
        finally:
            # Also after an error of ``follow``: the caller then fetches the
            # next page itself instead of waiting for the worker.
            self._pages.put((None, None, None))
