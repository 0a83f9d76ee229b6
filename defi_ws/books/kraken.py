"""Kraken v2 ``book``: streamed snapshot + updates, CRC32 checksum of the top 10 levels.

Rules implemented (https://docs.kraken.com/api/docs/websocket-v2/book and the guide
https://docs.kraken.com/api/docs/guides/spot-ws-book-v2):

1. ``type: "snapshot"`` replaces the book; ``type: "update"`` changes it. The book has
   no sequence number: integrity rests on the checksum alone.
2. Levels are processed in message order (one message may change a level twice);
   ``qty`` 0 removes a level.
3. After each message the book is truncated to the subscribed depth: Kraken sends no
   removal for a level pushed out of scope.
4. ``checksum`` (snapshots and updates): CRC32 (unsigned) of the 10 best asks then the
   10 best bids, each price and qty with ``.`` removed and leading zeros stripped
   (:func:`~defi_ws.books.kraken_checksum`). A mismatch is a CHECKSUM_MISMATCH and asks
   to RESUBSCRIBE.

Prices are JSON *numbers*: ``0.10000000`` decoded as a float is ``0.1`` and the
checksum's digits are gone. Either decode with exact decimals
(``json.loads(raw, parse_float=Decimal)``, msgspec ``Decimal`` fields), or pass the
instrument's ``price_precision``/``qty_precision`` (from the ``instrument`` channel) and
every value is formatted to them. A float without precisions raises
:class:`~defi_ws.books.BookUsageError` rather than resyncing for ever. The digit
stripping relies on Kraken writing every value with the instrument's full precision
(``1.00000000``, never ``1``): otherwise ``"1"`` and ``"0.00000001"`` would hash alike.

Limits: only the top 10 levels are verified. With ``depth`` above 10, a lost update
below the 10th level is undetectable until it rises into the top 10 (then the checksum
catches it): the protocol offers nothing better.

Choices where the documents are silent: a crossed book after an update whose checksum
was absent or disabled breaks the book (``reject_crossed``); an update that arrives
before the first snapshot is DISCARDED.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from defi_ws.books._book import (
    APPLIED,
    DISCARDED,
    IGNORED,
    ApplyResult,
    BookState,
    BookUsageError,
    Level,
    Malformed,
    OrderBook,
    Outcome,
    ResyncAction,
    ResyncReason,
    Side,
    _BookSide,
    _new_level,
    integer,
    number,
)
from defi_ws.books.checksum import KRAKEN_CHECKSUM_LEVELS, kraken_checksum
from defi_ws.errors import ConfigError

__all__ = ["KRAKEN_DEPTHS", "KrakenBook"]

#: Depths Kraken's ``book`` channel offers.
KRAKEN_DEPTHS = frozenset({10, 25, 100, 500, 1000})


class KrakenBook(OrderBook):
    """A Kraken v2 book of one symbol.

    Args:
        symbol: e.g. ``"BTC/USD"``.
        depth: the subscribed depth (10, 25, 100, 500 or 1000).
        price_precision: decimals of the instrument's prices; when given, every price
            is formatted to it (needed for float-decoded messages).
        qty_precision: likewise for quantities.
        verify_checksum: compare checksums (default True).
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.

    Attributes:
        price_precision: as given.
        qty_precision: as given.
        verify_checksum: as given.
    """

    venue = "kraken"

    def __init__(
        self,
        symbol: str,
        *,
        depth: int = 10,
        price_precision: int | None = None,
        qty_precision: int | None = None,
        verify_checksum: bool = True,
        reject_crossed: bool = True,
    ) -> None:
        problems = []
        if depth not in KRAKEN_DEPTHS:
            problems.append(f"depth must be one of {sorted(KRAKEN_DEPTHS)}, got {depth!r}")
        for name, value in (("price_precision", price_precision),
                            ("qty_precision", qty_precision)):
            if value is not None and (type(value) is not int or not 0 <= value <= 18):
                problems.append(f"{name} must be an int in 0..18 or None, got {value!r}")
        if problems:
            raise ConfigError(problems)
        super().__init__(symbol, depth=depth, reject_crossed=reject_crossed,
                         resync_action=ResyncAction.RESUBSCRIBE)
        self.price_precision = price_precision
        self.qty_precision = qty_precision
        self.verify_checksum = verify_checksum

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping) or message.get("channel") != "book":
            self.counters.ignored += 1
            return IGNORED
        kind = message.get("type")
        result = IGNORED
        for entry in message["data"]:
            if entry.get("symbol") != self.symbol:
                continue
            if kind == "snapshot":
                result = self._snapshot(entry)
            elif kind == "update":
                result = self._update(entry)
            else:
                raise Malformed(f"unknown type {kind!r}")
            if result.outcome is Outcome.RESYNC_NEEDED:
                return result
        if result is IGNORED:
            self.counters.ignored += 1
        return result

    def _snapshot(self, entry: Mapping[str, Any]) -> ApplyResult:
        bids, asks = entry["bids"], entry["asks"]
        self._clear_levels()
        self._levels(self._bids, bids)
        self._levels(self._asks, asks)
        self._truncate()
        self._snapshot_loaded(None)
        return self._check(entry) or APPLIED

    def _update(self, entry: Mapping[str, Any]) -> ApplyResult:
        if self._state is not BookState.LIVE:
            self.counters.discarded += 1
            return DISCARDED
        self._levels(self._bids, entry.get("bids", ()))
        self._levels(self._asks, entry.get("asks", ()))
        self._truncate()
        self.counters.applied += 1
        return self._check(entry) or APPLIED

    def _levels(self, side: _BookSide, levels: Any) -> None:
        for level in levels:
            price, price_text = self._number(level["price"], self.price_precision)
            if not price:
                raise Malformed(f"price 0: {level['price']!r}")
            qty, qty_text = self._number(level["qty"], self.qty_precision)
            self._put_level(side, _new_level(Level, (price, qty, price_text, qty_text, None)))

    def _number(self, raw: object, precision: int | None) -> tuple[Decimal, str]:
        if precision is None:
            if type(raw) is float:
                raise BookUsageError(
                    f"Kraken book {self.symbol}: a float ({raw!r}) has lost the venue's "
                    "digits the checksum needs: decode with parse_float=Decimal, or pass "
                    "price_precision and qty_precision")
            return number(raw)
        if type(raw) is float:
            value = Decimal(repr(raw))
            if not value.is_finite() or value.is_signed():
                raise Malformed(f"not a finite non-negative number: {raw!r}")
        else:
            value = number(raw)[0]
        return value, format(value, f".{precision}f")

    def _check(self, entry: Mapping[str, Any]) -> ApplyResult | None:
        checksum = entry.get("checksum")
        if not self.verify_checksum or checksum is None:
            self.counters.checksums_skipped += 1
            return self._crossed()
        expected = integer(checksum, "checksum")
        self.counters.checksums_verified += 1
        mine = kraken_checksum(asks=self._top_raw(Side.ASK, KRAKEN_CHECKSUM_LEVELS),
                               bids=self._top_raw(Side.BID, KRAKEN_CHECKSUM_LEVELS))
        if mine != expected:
            return self._break(ResyncReason.CHECKSUM_MISMATCH,
                               f"checksum {expected} from the venue, {mine} computed")
        return None
