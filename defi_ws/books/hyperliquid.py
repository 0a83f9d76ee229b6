"""Hyperliquid ``l2Book``: every message is the whole book.

Rules implemented (https://hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/websocket/subscriptions,
``WsBook {coin, levels: [bids, asks], time}``, ``WsLevel {px, sz, n}``):

1. Each ``l2Book`` message replaces the book (there is no sequence number and no
   delta); ``levels[0]`` are bids, ``levels[1]`` asks; ``n`` is kept as
   :attr:`~defi_ws.books.Level.orders`.
2. ``time`` (block time, ms) orders messages: one older than the book is
   STALE_DROPPED; equal times are applied (a re-push of the same block).
3. A snapshot that cannot be right (crossed, malformed) breaks the book, which then
   waits for the next push (:attr:`~defi_ws.books.ResyncAction.AWAIT_SNAPSHOT`:
   nothing to do).

Choices where the documents are silent: a crossed snapshot breaks the book
(``reject_crossed``); the docs give schemas only, the message shape follows a
third-party live capture (see ``shared/reference/venues.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from defi_ws.books._book import (
    APPLIED,
    IGNORED,
    STALE_DROPPED,
    ApplyResult,
    Malformed,
    OrderBook,
    ResyncAction,
    integer,
)

__all__ = ["HyperliquidBook"]


class HyperliquidBook(OrderBook):
    """A Hyperliquid ``l2Book`` of one coin.

    Args:
        coin: e.g. ``"BTC"``.
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.
    """

    venue = "hyperliquid"

    def __init__(self, coin: str, *, reject_crossed: bool = True) -> None:
        super().__init__(coin, reject_crossed=reject_crossed,
                         resync_action=ResyncAction.AWAIT_SNAPSHOT)
        self._last_time: int | None = None

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping) or message.get("channel") != "l2Book":
            self.counters.ignored += 1
            return IGNORED
        data = message["data"]
        if data.get("coin") != self.symbol:
            self.counters.ignored += 1
            return IGNORED
        time = integer(data["time"], "time")
        if self._last_time is not None and time < self._last_time:
            self.counters.stale_dropped += 1
            return STALE_DROPPED
        levels = data["levels"]
        if len(levels) != 2:
            raise Malformed(f"levels must be [bids, asks], got {len(levels)} lists")
        bids, asks = levels
        self._clear_levels()
        self._last_time = time
        for level in bids:
            self._put(self._bids, level["px"], level["sz"], _count(level))
        for level in asks:
            self._put(self._asks, level["px"], level["sz"], _count(level))
        self._snapshot_loaded(time)
        return self._crossed() or APPLIED

    def _forget(self) -> None:
        self._last_time = None


def _count(level: Mapping[str, Any]) -> int | None:
    n = level.get("n")
    return n if type(n) is int else None
