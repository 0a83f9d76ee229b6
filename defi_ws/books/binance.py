"""Binance diff-depth books (spot and USD-M futures): REST snapshot + ``depthUpdate``.

Rules implemented (spot: ``binance/binance-spot-api-docs`` ``web-socket-streams.md``,
"How to manage a local order book correctly"; USD-M: developers.binance.com,
usds-margined-futures/websocket-market-streams/How-to-manage-a-local-order-book-correctly):

1. Updates that arrive before the snapshot are buffered (bounded by ``max_buffered``;
   the oldest is evicted first). The first buffered update asks for a snapshot
   (:attr:`~defi_ws.books.ResyncAction.FETCH_SNAPSHOT`): fetch
   ``/api/v3/depth`` (spot) or ``/fapi/v1/depth`` (USD-M) yourself, then pass the JSON
   to :meth:`BinanceBook.apply_snapshot` (or let :class:`~defi_ws.books.SnapshotSync`
   run your fetcher).
2. Against the snapshot's ``lastUpdateId`` (L): spot drops updates with ``u <= L``
   and the first applied must have ``U <= L+1 <= u``; USD-M drops ``u < L`` and the
   first applied must have ``U <= L <= u``. A first update that starts later means the
   snapshot predates the stream: SNAPSHOT_TOO_OLD, fetch again (the buffer is kept).
3. Then every update must follow the last one applied (id ``last``). Spot: an update
   with ``U > last + 1`` is a SEQUENCE_GAP (``shared/reference/venues.md`` [BN-S]: "a
   gap exists if U > local+1; normally the next U equals the previous u + 1"); one
   that overlaps (``U <= last < u``) is applied, which is exact because sizes are
   absolute (the same reasoning as the first update after the snapshot);
   ``strict_sequence=True`` refuses the overlap too (``U == last + 1``). USD-M:
   ``pu == last``. An update whose ``u`` is not above ``last`` is dropped as stale (it
   is already in the book). A gap clears the book and asks for a fresh snapshot,
   keeping the update that revealed it (and what follows) in the buffer.
4. Sizes are absolute; ``"0"`` removes a level (removing an unknown level is normal).
5. The book is not truncated: the diff stream covers the whole book (levels beyond the
   snapshot's depth appear only once they change, as Binance notes).

Choices where the documents are silent: a crossed book after an update breaks the book
(``reject_crossed``); a snapshot that arrives while the book is LIVE is dropped
(STALE_DROPPED), never mixed in.

Messages: raw (``{"e":"depthUpdate",...}``) or combined-stream (``{"stream":...,
"data":{...}}``) events; other messages and other symbols are IGNORED.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from defi_ws.books._book import (
    APPLIED,
    BUFFERED,
    BUFFERED_FETCH,
    IGNORED,
    MALFORMED_ERRORS,
    STALE_DROPPED,
    ApplyResult,
    BookState,
    Malformed,
    OrderBook,
    Outcome,
    ResyncAction,
    ResyncReason,
    integer,
)
from defi_ws.errors import ConfigError

__all__ = ["BinanceBook", "BinanceMarket"]


class BinanceMarket(enum.Enum):
    """Which Binance market: the sequencing rules differ."""

    SPOT = "spot"
    USDM = "usdm"


# A buffered update: (U, u, pu or None, bids, asks).
_Update = tuple[int, int, int | None, Sequence[Any], Sequence[Any]]


class BinanceBook(OrderBook):
    """A Binance book from the ``<symbol>@depth`` stream and a REST snapshot.

    Args:
        symbol: e.g. ``"BTCUSDT"`` (case-insensitive; messages carry upper case).
        market: spot or USD-M futures.
        max_buffered: most updates kept while waiting for a snapshot (>= 1).
        strict_sequence: spot only: require ``U == previous u + 1`` (an overlapping
            update, exact to apply, resyncs instead).
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.

    Attributes:
        market: as given.
        strict_sequence: as given.
    """

    venue = "binance"

    def __init__(
        self,
        symbol: str,
        *,
        market: BinanceMarket = BinanceMarket.SPOT,
        max_buffered: int = 1000,
        strict_sequence: bool = False,
        reject_crossed: bool = True,
    ) -> None:
        if type(max_buffered) is not int or max_buffered < 1:
            raise ConfigError([f"max_buffered must be an int >= 1, got {max_buffered!r}"])
        super().__init__(symbol.upper() if isinstance(symbol, str) else symbol,
                         reject_crossed=reject_crossed,
                         resync_action=ResyncAction.FETCH_SNAPSHOT)
        self.market = market
        self.strict_sequence = strict_sequence
        self._usdm = market is BinanceMarket.USDM
        self._max_buffered = max_buffered
        self._buffer: deque[_Update] = deque()
        self._fetch_asked = False
        self._awaiting_first = False

    @property
    def needs_snapshot(self) -> bool:
        """True while the book waits for a REST snapshot."""
        return self._state is not BookState.LIVE

    @property
    def buffered(self) -> int:
        """Updates buffered now."""
        return len(self._buffer)

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping):
            self.counters.ignored += 1
            return IGNORED
        event = message
        if "e" not in event:
            data = event.get("data")
            if not isinstance(data, Mapping):
                self.counters.ignored += 1
                return IGNORED
            event = data
        if event.get("e") != "depthUpdate" or event.get("s") != self.symbol:
            self.counters.ignored += 1
            return IGNORED
        first = integer(event["U"], "U")
        last = integer(event["u"], "u")
        prev = integer(event["pu"], "pu") if self._usdm else None
        if first > last:
            raise Malformed(f"U {first} > u {last}")
        update: _Update = (first, last, prev, event["b"], event["a"])
        if self._state is not BookState.LIVE:
            return self._buffer_update(update)
        return self._step(update)

    def apply_snapshot(self, snapshot: Mapping[str, Any]) -> ApplyResult:
        """Load a REST depth snapshot and replay the buffered updates on it.

        Args:
            snapshot: the decoded JSON of ``/api/v3/depth`` or ``/fapi/v1/depth``
                (``lastUpdateId``, ``bids``, ``asks``).

        Returns:
            APPLIED (the book is LIVE), STALE_DROPPED (the book was already LIVE: the
            snapshot is not used), or RESYNC_NEEDED (SNAPSHOT_TOO_OLD, a gap in the
            buffer, or MALFORMED: fetch again).
        """
        if self._state is BookState.LIVE:
            self.counters.stale_dropped += 1
            return STALE_DROPPED
        try:
            last_id = integer(snapshot["lastUpdateId"], "lastUpdateId")
            bids, asks = snapshot["bids"], snapshot["asks"]
            self._clear_levels()
            for level in bids:
                self._put(self._bids, level[0], level[1])
            for level in asks:
                self._put(self._asks, level[0], level[1])
        except MALFORMED_ERRORS as exc:
            return self._break(ResyncReason.MALFORMED, f"snapshot: {type(exc).__name__}: {exc}")
        self._snapshot_loaded(last_id)
        self._fetch_asked = False
        self._awaiting_first = True
        buffer = self._buffer
        oldest = True
        try:
            while buffer:
                update = buffer.popleft()
                result = self._step(update, replay=True, oldest=oldest)
                if result.outcome is Outcome.RESYNC_NEEDED:
                    return result
                oldest = False
        except MALFORMED_ERRORS as exc:
            return self._break(ResyncReason.MALFORMED, f"{type(exc).__name__}: {exc}")
        return self._crossed() or APPLIED

    def _buffer_update(self, update: _Update) -> ApplyResult:
        buffer = self._buffer
        if len(buffer) >= self._max_buffered:
            buffer.popleft()
            self.counters.buffer_evicted += 1
        buffer.append(update)
        self.counters.buffered += 1
        if not self._fetch_asked:
            self._fetch_asked = True
            return BUFFERED_FETCH
        return BUFFERED

    def _step(self, update: _Update, replay: bool = False, oldest: bool = False) -> ApplyResult:
        """Sequence one update against the book (LIVE) and apply it.

        ``replay``: the update was buffered before the snapshot; ``oldest``: and it is
        the oldest one kept (a snapshot that does not reach it is too old).
        """
        first, last, prev, bids, asks = update
        book_id = self._last_update_id
        assert book_id is not None
        if self._awaiting_first:
            if self._usdm:
                stale, follows = last < book_id, first <= book_id
                rule = f"U <= {book_id} <= u"
            else:
                stale, follows = last <= book_id, first <= book_id + 1
                rule = f"U <= {book_id + 1} <= u"
        else:
            stale = last <= book_id
            if self._usdm:
                follows, rule = prev == book_id, f"pu == {book_id}"
            elif self.strict_sequence:
                follows, rule = first == book_id + 1, f"U == {book_id + 1}"
            else:
                follows, rule = first <= book_id + 1, f"U <= {book_id + 1}"
        if stale:
            self.counters.stale_dropped += 1
            return STALE_DROPPED
        if not follows:
            got = f"U={first} u={last}" + (f" pu={prev}" if self._usdm else "")
            if replay:
                self._buffer.appendleft(update)
            else:
                self._buffer.append(update)
            if oldest:
                return self._break(ResyncReason.SNAPSHOT_TOO_OLD,
                                   f"snapshot lastUpdateId {book_id} predates the first "
                                   f"update: expected {rule}, got {got}")
            return self._break(ResyncReason.SEQUENCE_GAP, f"expected {rule}, got {got}")
        bid_side, ask_side = self._bids, self._asks
        for level in bids:
            self._put(bid_side, level[0], level[1])
        for level in asks:
            self._put(ask_side, level[0], level[1])
        self._last_update_id = last
        self._awaiting_first = False
        self.counters.applied += 1
        if replay:
            return APPLIED
        return self._crossed() or APPLIED

    def _on_break(self) -> None:
        # The buffer keeps what it holds: updates after a break are what the next
        # snapshot needs; older ones are dropped by the snapshot's lastUpdateId.
        self._fetch_asked = True
        self._awaiting_first = False

    def _forget(self) -> None:
        self._buffer.clear()
        self._fetch_asked = False
        self._awaiting_first = False
