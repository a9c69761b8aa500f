"""Fetch and parse the next page of a listing while the current one is stored.

A listing run fetches and parses page N+1 on a worker thread while it
commits page N. The wait for the provider, the parsing and the database's
work (SQLite and psycopg release the GIL while they run) then overlap.
Requests still go out one at a time and in order, so the fetcher's retries
and rate budget see the same sequence as without the overlap. A page is
fetched ahead only after the page before it was parsed, and it is stored
only after that page's transaction has committed, so a crash still re-reads
at most one page. The difference is that a run which fails while storing a
page may already have requested the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Generic, TypeVar

from connectors.base import PageRequest

T = TypeVar("T")


class PageFetches(Generic[T]):
    """Fetches listing pages, one of them ahead of the caller at most.

    ``fetch`` takes a request and its validators (None for no conditional
    request) and returns what the caller needs of the page.

    Use it as a context manager: leaving the block waits for a fetch still
    running, so the fetcher is free again when the run ends.
    """

    def __init__(self, fetch: Callable[[PageRequest, dict[str, str] | None], T]):
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._ahead: tuple[PageRequest, Future[T]] | None = None

    def __enter__(self) -> PageFetches[T]:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Wait for a fetch still running. Its page is not stored, because the
        # run ended before it.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def fetch_ahead(self, request: PageRequest) -> None:
        """Start fetching ``request`` on the worker thread, unconditionally."""
        if self._ahead is not None:
            raise RuntimeError("a page is already being fetched ahead")
        self._ahead = (request, self._pool.submit(self._fetch, request, None))

    def get(self, request: PageRequest, validators: dict[str, str] | None = None) -> T:
        """Return the result for ``request``, fetched ahead or fetched now.

        A fetch ahead that failed raises its error here.
        """
        if self._ahead is None:
            return self._fetch(request, validators)
        ahead, future = self._ahead
        self._ahead = None
        if ahead != request:
            if not future.cancel():
                future.exception()  # wait for it, so fetches never overlap
            return self._fetch(request, validators)
        return future.result()
