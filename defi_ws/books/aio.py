"""Async glue for REST snapshots: the one part of :mod:`defi_ws.books` that awaits.

REST is the user's business: defi-ws never calls a venue's HTTP API. You provide an
async *fetcher*, ``fetch(symbol) -> decoded JSON``, using whatever HTTP client and
rate limiting your process already has; this module only decides *when* to call it::

    book = BinanceBook("BTCUSDT")
    sync = SnapshotSync(fetch_depth)          # async def fetch_depth(symbol) -> dict

    def on_message(msg):
        sync.on_result(book, book.apply(msg))  # starts a fetch when the book asks

A book asks with :attr:`~defi_ws.books.ApplyResult.action` FETCH_SNAPSHOT (its first
buffered update, or a break). :class:`SnapshotSync` runs at most one fetch per book at a
time and retries (after ``retry_delay_s``) while the book still needs a snapshot: a
fetch that raised, or a snapshot the book refused (too old, malformed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from defi_ws.books._book import ApplyResult, Outcome, ResyncAction
from defi_ws.errors import ConfigError

__all__ = ["SnapshotBook", "SnapshotFetcher", "SnapshotSync", "fetch_snapshot"]

_log = logging.getLogger("defi_ws.books")

#: ``await fetch(symbol)`` returns the venue's decoded REST snapshot.
SnapshotFetcher = Callable[[str], Awaitable[Mapping[str, Any]]]


class SnapshotBook(Protocol):
    """A book synced from REST snapshots (:class:`~defi_ws.books.BinanceBook`,
    :class:`~defi_ws.books.OkxBook` with ``SnapshotSource.REST``)."""

    @property
    def symbol(self) -> str:
        """The instrument, passed to the fetcher."""

    @property
    def needs_snapshot(self) -> bool:
        """True while the book waits for a snapshot."""

    def apply_snapshot(self, snapshot: Mapping[str, Any]) -> ApplyResult:
        """Load a snapshot and replay the buffered updates."""


async def fetch_snapshot(book: SnapshotBook, fetch: SnapshotFetcher) -> ApplyResult:
    """Fetch one snapshot for ``book`` and apply it.

    Args:
        book: the book.
        fetch: your fetcher.

    Returns:
        What :meth:`apply_snapshot` returned.
    """
    snapshot = await fetch(book.symbol)
    return book.apply_snapshot(snapshot)


class SnapshotSync:
    """Runs your fetcher whenever a book asks for a REST snapshot.

    Args:
        fetch: ``async fetch(symbol) -> decoded JSON``.
        retry_delay_s: wait between attempts (after a failed fetch or a refused
            snapshot), > 0.
        max_attempts: attempts per request before giving up (None: until the book is
            LIVE or the request is cancelled). A book given up on waits for the next
            request (:meth:`request`, or its next break).

    Attributes:
        fetches: fetcher calls made.
        errors: fetcher calls that raised.
        refused: snapshots the book did not take (RESYNC_NEEDED).
        gave_up: requests that ran out of attempts.
    """

    def __init__(self, fetch: SnapshotFetcher, *, retry_delay_s: float = 1.0,
                 max_attempts: int | None = None) -> None:
        problems = []
        if not retry_delay_s > 0:
            problems.append(f"retry_delay_s must be > 0, got {retry_delay_s!r}")
        if max_attempts is not None and (type(max_attempts) is not int or max_attempts < 1):
            problems.append(f"max_attempts must be an int >= 1 or None, got {max_attempts!r}")
        if problems:
            raise ConfigError(problems)
        self._fetch = fetch
        self.retry_delay_s = retry_delay_s
        self.max_attempts = max_attempts
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.fetches = 0
        self.errors = 0
        self.refused = 0
        self.gave_up = 0

    def on_result(self, book: SnapshotBook, result: ApplyResult) -> None:
        """Pass every result of ``book.apply``: a FETCH_SNAPSHOT starts a fetch."""
        if result.action is ResyncAction.FETCH_SNAPSHOT:
            self.request(book)

    def request(self, book: SnapshotBook) -> None:
        """Fetch for ``book`` now unless a fetch for it is already running.

        Must be called with a running event loop.
        """
        key = id(book)
        if key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._run(book))
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    def in_flight(self, book: SnapshotBook) -> bool:
        """True while a fetch for ``book`` runs."""
        return id(book) in self._tasks

    async def _run(self, book: SnapshotBook) -> None:
        attempt = 0
        while book.needs_snapshot:
            if self.max_attempts is not None and attempt >= self.max_attempts:
                self.gave_up += 1
                _log.error("book %s: no usable snapshot after %d attempts", book.symbol,
                           attempt)
                return
            attempt += 1
            self.fetches += 1
            try:
                snapshot = await self._fetch(book.symbol)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                _log.warning("book %s: snapshot fetch failed (%s: %s)", book.symbol,
                             type(exc).__name__, exc)
            else:
                result = book.apply_snapshot(snapshot)
                if result.outcome is not Outcome.RESYNC_NEEDED:
                    return
                self.refused += 1
            await asyncio.sleep(self.retry_delay_s)

    async def aclose(self) -> None:
        """Cancel every running fetch and wait for them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
