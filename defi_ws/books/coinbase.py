"""Coinbase Advanced Trade ``level2``: streamed snapshot + updates, ``sequence_num``.

Rules implemented (https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-channels,
level2 channel; messages arrive on channel ``l2_data``):

1. An event ``type: "snapshot"`` for the product replaces the book; ``type: "update"``
   events change it. Each update is ``{side, price_level, new_quantity}``:
   ``new_quantity`` is the absolute size, ``"0"`` removes the level. ``side`` is
   ``"bid"`` or ``"offer"`` (``"ask"`` is accepted too).
2. ``level2`` "guarantees delivery of all updates", so any break in the envelope's
   ``sequence_num`` means something was lost: a jump is a SEQUENCE_GAP, a number not
   above the last is a SEQUENCE_RESET (a new connection restarts the count). Either
   breaks the book and asks to RESUBSCRIBE, unless the same envelope carries a new
   snapshot of this product, which is a fresh start by itself.
3. Updates before the first snapshot are DISCARDED.

``sequence_num`` scope (**UNCONFIRMED**): whether it counts per connection or per
channel is not documented; third-party fixtures show one counter per connection,
subscription acks and heartbeats included. The book takes that reading, so **feed it
every message of its connection** (other channels and products are IGNORED but counted
in the sequence); a book fed only its own ``l2_data`` messages would see gaps and
resync (safe, but useless: pass ``check_sequence=False`` only if you check the
connection's sequence yourself). Call :meth:`~defi_ws.books.OrderBook.reset` on a new
connection (not required: the restart is caught as SEQUENCE_RESET).

Choices where the documents are silent: a crossed book after a message breaks the
book (``reject_crossed``).
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

__all__ = ["CoinbaseBook"]


class CoinbaseBook(OrderBook):
    """A Coinbase Advanced Trade ``level2`` book of one product.

    Args:
        product_id: e.g. ``"BTC-USD"``.
        check_sequence: check each envelope's ``sequence_num`` (default True).
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.

    Attributes:
        check_sequence: as given.
    """

    venue = "coinbase"

    def __init__(
        self,
        product_id: str,
        *,
        check_sequence: bool = True,
        reject_crossed: bool = True,
    ) -> None:
        super().__init__(product_id, reject_crossed=reject_crossed,
                         resync_action=ResyncAction.RESUBSCRIBE)
        self.check_sequence = check_sequence
        self._sequence: int | None = None

    @property
    def last_sequence(self) -> int | None:
        """The last ``sequence_num`` seen on the connection (any channel), or None."""
        return self._sequence

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping):
            self.counters.ignored += 1
            return IGNORED
        ours: list[Mapping[str, Any]] = []
        if message.get("channel") == "l2_data":
            ours = [e for e in message["events"] if e.get("product_id") == self.symbol]
        raw_sequence = message.get("sequence_num")
        sequence: int | None = None
        if self.check_sequence and raw_sequence is not None:
            sequence = integer(raw_sequence, "sequence_num")
            last, self._sequence = self._sequence, sequence
            if (last is not None and sequence != last + 1
                    and self._state is BookState.LIVE
                    and not any(e.get("type") == "snapshot" for e in ours)):
                reason = (ResyncReason.SEQUENCE_GAP if sequence > last + 1
                          else ResyncReason.SEQUENCE_RESET)
                return self._break(reason, f"expected sequence_num {last + 1}, "
                                           f"got {sequence}")
        if not ours:
            self.counters.ignored += 1
            return IGNORED
        result = APPLIED
        bids, asks = self._bids, self._asks
        for event in ours:
            kind = event.get("type")
            if kind == "snapshot":
                self._clear_levels()
                result = APPLIED
            elif kind == "update":
                if self._state is not BookState.LIVE:
                    self.counters.discarded += 1
                    result = DISCARDED
                    continue
                self.counters.applied += 1
            else:
                raise Malformed(f"unknown event type {kind!r}")
            for update in event["updates"]:
                side = update["side"]
                if side == "bid":
                    book_side = bids
                elif side == "offer" or side == "ask":
                    book_side = asks
                else:
                    raise Malformed(f"unknown side {side!r}")
                self._put(book_side, update["price_level"], update["new_quantity"])
            if kind == "snapshot":
                self._snapshot_loaded(sequence)
        if self._state is BookState.LIVE:
            self._last_update_id = sequence
            return self._crossed() or result
        return result

    def _forget(self) -> None:
        self._sequence = None
