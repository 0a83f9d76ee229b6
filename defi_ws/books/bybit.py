"""Bybit v5 ``orderbook.{depth}.{symbol}``: streamed snapshot + deltas, ``u`` and ``seq``.

Rules implemented (``bybit-exchange/docs`` ``docs/v5/websocket/public/orderbook.mdx``):

1. ``type: "snapshot"`` replaces the book, whenever it comes: after a subscribe, when
   Bybit re-sends one after a problem on its side, with ``u == 1`` after a service
   restart, and every 3 s unchanged on depth 1 (same ``u``).
2. ``type: "delta"`` changes the book; sizes are absolute, ``"0"`` removes a level.
   A delta before the first snapshot is DISCARDED.
3. After each message the book is truncated to the subscribed depth.
4. A break asks to RESUBSCRIBE (a new subscription streams a snapshot).

Sequencing (**UNCONFIRMED** for this channel): the page calls ``u`` "Update ID. Is a
sequence"; the SBE and full-book pages say the next ``u`` is the previous ``u + 1``.
Applying ``+1`` to the JSON ``orderbook.N`` deltas is an inference, so the safe reading
is taken: with ``strict_sequence=True`` (default) a delta must have
``u == previous u + 1``; a jump is a SEQUENCE_GAP, a ``u`` not above the previous
(``u == 1`` after a restart included) is a SEQUENCE_RESET. If the venue ever skips ids
legitimately, the cost is visible resyncs, never a wrong book. With
``strict_sequence=False`` only ``u`` going backwards (or repeating) breaks the book.
``seq`` (a cross sequence shared across depths) is recorded as :attr:`BybitBook.last_seq`,
not checked: no rule about it is documented.

Choices where the documents are silent: a crossed book after a message breaks the book
(``reject_crossed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from defi_ws.books._book import (
    APPLIED,
    DISCARDED,
    IGNORED,
    ApplyResult,
    BookState,
    Malformed,
    OrderBook,
    ResyncAction,
    ResyncReason,
    integer,
)
from defi_ws.errors import ConfigError

__all__ = ["BybitBook"]


class BybitBook(OrderBook):
    """A Bybit v5 book of one symbol at one depth.

    Args:
        symbol: e.g. ``"BTCUSDT"``.
        depth: the subscribed depth (1, 25, 50, 100, 200, 1000 depending on product).
        strict_sequence: require ``u == previous u + 1`` on deltas (see above).
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.

    Attributes:
        topic: the topic the book reads, ``orderbook.{depth}.{symbol}``.
        strict_sequence: as given.
    """

    venue = "bybit"

    def __init__(
        self,
        symbol: str,
        *,
        depth: int,
        strict_sequence: bool = True,
        reject_crossed: bool = True,
    ) -> None:
        if type(depth) is not int or depth < 1:
            raise ConfigError([f"depth must be an int >= 1, got {depth!r}"])
        super().__init__(symbol, depth=depth, reject_crossed=reject_crossed,
                         resync_action=ResyncAction.RESUBSCRIBE)
        self.topic = f"orderbook.{depth}.{symbol}"
        self.strict_sequence = strict_sequence
        self._last_seq: int | None = None

    @property
    def last_seq(self) -> int | None:
        """The cross sequence ``seq`` of the last message applied, or None."""
        return self._last_seq

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping) or message.get("topic") != self.topic:
            self.counters.ignored += 1
            return IGNORED
        kind = message.get("type")
        data = message["data"]
        if data["s"] != self.symbol:
            raise Malformed(f"symbol {data['s']!r} on topic {self.topic}")
        update_id = integer(data["u"], "u")
        seq = data.get("seq")
        if kind == "snapshot":
            bids, asks = data["b"], data["a"]
            self._clear_levels()
            for level in bids:
                self._put(self._bids, level[0], level[1])
            for level in asks:
                self._put(self._asks, level[0], level[1])
            self._truncate()
            self._snapshot_loaded(update_id)
        elif kind == "delta":
            if self._state is not BookState.LIVE:
                self.counters.discarded += 1
                return DISCARDED
            last = self._last_update_id
            assert last is not None
            if update_id <= last:
                return self._break(ResyncReason.SEQUENCE_RESET,
                                   f"u went from {last} to {update_id}")
            if self.strict_sequence and update_id != last + 1:
                return self._break(ResyncReason.SEQUENCE_GAP,
                                   f"expected u == {last + 1}, got u={update_id}")
            for level in data["b"]:
                self._put(self._bids, level[0], level[1])
            for level in data["a"]:
                self._put(self._asks, level[0], level[1])
            self._truncate()
            self._last_update_id = update_id
            self.counters.applied += 1
        else:
            raise Malformed(f"unknown type {kind!r}")
        self._last_seq = seq if type(seq) is int else None
        return self._crossed() or APPLIED

    def _forget(self) -> None:
        self._last_seq = None
