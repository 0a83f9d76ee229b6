"""OKX v5 books: streamed snapshot + updates, ``seqId``/``prevSeqId``, CRC32 checksum.

Rules implemented (https://www.okx.com/docs-v5/en/, WebSocket "Order book channel"):

1. ``action: "snapshot"`` replaces the book (``prevSeqId`` is -1); ``books5`` and
   ``bbo-tbt`` pushes carry no ``action`` and each replaces the book.
2. ``action: "update"``: its ``prevSeqId`` must equal the ``seqId`` of the last
   message applied. That covers the documented cases: the empty keep-alive update
   after ~60 s without change (``prevSeqId == seqId``) and the sequence reset after
   maintenance (``seqId < prevSeqId``, still chained by ``prevSeqId``). Anything else
   is a SEQUENCE_GAP. Sizes are absolute; ``"0"`` removes a level.
3. ``checksum``: CRC32 (signed) of the top 25 levels, interleaved
   ``bidPx:bidSz:askPx:askSz`` (:func:`~defi_ws.books.okx_checksum`), over the book
   after the message. A mismatch is a CHECKSUM_MISMATCH.
4. After each message the book is truncated to the channel's depth (``books`` and
   ``books-l2-tbt`` 400, ``books50-l2-tbt`` 50, ``books5`` 5, ``bbo-tbt`` 1).
5. A break asks to RESUBSCRIBE (a new subscription streams a new snapshot) or, with
   ``snapshot_source=SnapshotSource.REST``, to FETCH_SNAPSHOT.

Changes announced by OKX, per ``shared/reference/venues.md`` (dates from OKX's help
pages and changelog; not verified against the live service):

* The checksum was deprecated in 2026-06: the field stays but is always ``0``. A
  checksum of ``0`` is therefore *not verified* (counted in ``checksums_skipped``);
  a real CRC32 is 0 once in 2**32. Gaps are still caught by ``prevSeqId``.
* The streamed initial snapshot is to be removed (production, early 2026-08). The
  replacement flow is implemented as ``snapshot_source=SnapshotSource.REST``:
  updates are buffered, the first one asks for a REST ``/api/v5/market/books``
  snapshot, updates with ``seqId <= snapshot seqId`` are dropped, the first applied
  must have ``prevSeqId <= snapshot seqId < seqId``, then chaining as in 2. The
  default stays STREAM (the protocol the task documents); a STREAM book whose venue
  no longer streams a snapshot stays SYNCING (never wrong, never LIVE): switch to
  REST then.

Choices where the documents are silent: a crossed book after a message whose
checksum was not verified breaks the book (``reject_crossed``); a message whose
checksum matched is the venue's own book and is not second-guessed.
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
    DISCARDED,
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
    Side,
    integer,
)
from defi_ws.books.checksum import OKX_CHECKSUM_LEVELS, okx_checksum
from defi_ws.errors import ConfigError

__all__ = ["OKX_CHANNEL_DEPTHS", "OkxBook", "SnapshotSource"]


class SnapshotSource(enum.Enum):
    """Where a book's snapshot comes from.

    Attributes:
        STREAM: the venue streams one after each subscribe; a break asks to
            RESUBSCRIBE.
        REST: the caller fetches one; updates are buffered meanwhile; a break asks to
            FETCH_SNAPSHOT.
    """

    STREAM = "stream"
    REST = "rest"


#: Levels per side of each OKX book channel.
OKX_CHANNEL_DEPTHS: dict[str, int] = {
    "books": 400,
    "books-l2-tbt": 400,
    "books50-l2-tbt": 50,
    "books5": 5,
    "bbo-tbt": 1,
}
_SNAPSHOT_ONLY = frozenset({"books5", "bbo-tbt"})

# A buffered update: (prevSeqId, seqId, entry).
_Update = tuple[int, int, Mapping[str, Any]]


def _orders(level: Sequence[Any]) -> int | None:
    if len(level) > 3:
        count = level[3]
        if type(count) is str and count.isdigit():
            return int(count)
    return None


class OkxBook(OrderBook):
    """An OKX book of one instrument on one book channel.

    Args:
        inst_id: e.g. ``"BTC-USDT"``.
        channel: ``books`` (default), ``books-l2-tbt``, ``books50-l2-tbt``, ``books5``
            or ``bbo-tbt``.
        depth: levels kept per side; default: the channel's (:data:`OKX_CHANNEL_DEPTHS`).
        snapshot_source: STREAM (default) or REST (see the module docstring).
        verify_checksum: compare non-zero checksums (default True).
        max_buffered: most updates buffered while waiting for a REST snapshot.
        reject_crossed: see :class:`~defi_ws.books.OrderBook`.

    Attributes:
        channel: as given.
        snapshot_source: as given.
        verify_checksum: as given.
    """

    venue = "okx"

    def __init__(
        self,
        inst_id: str,
        *,
        channel: str = "books",
        depth: int | None = None,
        snapshot_source: SnapshotSource = SnapshotSource.STREAM,
        verify_checksum: bool = True,
        max_buffered: int = 1000,
        reject_crossed: bool = True,
    ) -> None:
        if type(max_buffered) is not int or max_buffered < 1:
            raise ConfigError([f"max_buffered must be an int >= 1, got {max_buffered!r}"])
        rest = snapshot_source is SnapshotSource.REST
        super().__init__(
            inst_id,
            depth=depth if depth is not None else OKX_CHANNEL_DEPTHS.get(channel),
            reject_crossed=reject_crossed,
            resync_action=ResyncAction.FETCH_SNAPSHOT if rest else ResyncAction.RESUBSCRIBE,
        )
        self.channel = channel
        self.snapshot_source = snapshot_source
        self.verify_checksum = verify_checksum
        self._rest = rest
        self._snapshot_only = channel in _SNAPSHOT_ONLY
        self._max_buffered = max_buffered
        self._buffer: deque[_Update] = deque()
        self._fetch_asked = False
        self._awaiting_first = False

    @property
    def needs_snapshot(self) -> bool:
        """True while a REST-snapshot book waits for its snapshot."""
        return self._rest and self._state is not BookState.LIVE

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        if not isinstance(message, Mapping) or "event" in message:
            self.counters.ignored += 1
            return IGNORED
        arg = message.get("arg")
        if (not isinstance(arg, Mapping) or arg.get("channel") != self.channel
                or arg.get("instId") != self.symbol):
            self.counters.ignored += 1
            return IGNORED
        action = message.get("action")
        result = IGNORED
        for entry in message["data"]:
            if action == "snapshot" or (action is None and self._snapshot_only):
                result = self._stream_snapshot(entry)
            elif action == "update":
                result = self._update(entry)
            else:
                raise Malformed(f"unknown action {action!r}")
            if result.outcome is Outcome.RESYNC_NEEDED:
                return result
        if result is IGNORED:  # an empty data array
            self.counters.ignored += 1
        return result

    # ------------------------------------------------------------------ snapshots

    def _stream_snapshot(self, entry: Mapping[str, Any]) -> ApplyResult:
        seq = integer(entry["seqId"], "seqId")
        self._load(entry)
        self._buffer.clear()  # every buffered update precedes this snapshot
        self._fetch_asked = False
        self._awaiting_first = False
        self._snapshot_loaded(seq)
        return self._check(entry) or APPLIED

    def apply_snapshot(self, snapshot: Mapping[str, Any]) -> ApplyResult:
        """Load a REST ``/api/v5/market/books`` snapshot and replay buffered updates.

        Args:
            snapshot: the decoded response (``{"code":"0","data":[{...}]}``) or its
                first ``data`` entry; it must carry ``seqId``, else it cannot be
                sequenced and is MALFORMED.

        Returns:
            APPLIED (LIVE), STALE_DROPPED (the book was LIVE already: not used) or
            RESYNC_NEEDED (too old, a gap in the buffer, malformed: fetch again).
        """
        if self._state is BookState.LIVE:
            self.counters.stale_dropped += 1
            return STALE_DROPPED
        try:
            body = snapshot
            if "data" in body:
                body = body["data"][0]
            raw_seq = body["seqId"]
            seq = int(raw_seq) if type(raw_seq) is str and raw_seq.isdigit() else integer(
                raw_seq, "seqId")
            self._load(body)
        except MALFORMED_ERRORS as exc:
            return self._break(ResyncReason.MALFORMED, f"snapshot: {type(exc).__name__}: {exc}")
        self._fetch_asked = False
        self._awaiting_first = True
        self._snapshot_loaded(seq)
        buffer = self._buffer
        last: Mapping[str, Any] | None = None
        oldest = True
        try:
            while buffer:
                prev, seq_id, entry = buffer.popleft()
                result = self._sequence(prev, seq_id, entry, replay=True, oldest=oldest)
                if result.outcome is Outcome.RESYNC_NEEDED:
                    return result
                if result is APPLIED:
                    last = entry
                oldest = False
            return (self._crossed() if last is None else self._check(last)) or APPLIED
        except MALFORMED_ERRORS as exc:
            return self._break(ResyncReason.MALFORMED, f"{type(exc).__name__}: {exc}")

    def _load(self, entry: Mapping[str, Any]) -> None:
        bids, asks = entry["bids"], entry["asks"]
        self._clear_levels()
        for level in bids:
            self._put(self._bids, level[0], level[1], _orders(level))
        for level in asks:
            self._put(self._asks, level[0], level[1], _orders(level))
        self._truncate()

    # ------------------------------------------------------------------ updates

    def _update(self, entry: Mapping[str, Any]) -> ApplyResult:
        prev = integer(entry["prevSeqId"], "prevSeqId")
        seq = integer(entry["seqId"], "seqId")
        if self._state is not BookState.LIVE:
            if not self._rest:
                self.counters.discarded += 1
                return DISCARDED
            buffer = self._buffer
            if len(buffer) >= self._max_buffered:
                buffer.popleft()
                self.counters.buffer_evicted += 1
            buffer.append((prev, seq, entry))
            self.counters.buffered += 1
            if not self._fetch_asked:
                self._fetch_asked = True
                return BUFFERED_FETCH
            return BUFFERED
        return self._sequence(prev, seq, entry)

    def _sequence(self, prev: int, seq: int, entry: Mapping[str, Any],
                  replay: bool = False, oldest: bool = False) -> ApplyResult:
        """Sequence one update against the book (LIVE) and apply it.

        ``replay``: the update was buffered before the snapshot; ``oldest``: and it is
        the oldest one kept (a snapshot that does not reach it is too old).
        """
        book_id = self._last_update_id
        assert book_id is not None
        if self._awaiting_first:  # just after a REST snapshot
            if seq <= book_id:
                self.counters.stale_dropped += 1
                return STALE_DROPPED
            if not prev <= book_id:
                if replay:
                    self._buffer.appendleft((prev, seq, entry))
                else:
                    self._buffer.append((prev, seq, entry))
                rule = (f"expected prevSeqId <= {book_id} < seqId, got prevSeqId={prev} "
                        f"seqId={seq}")
                if oldest:
                    return self._break(ResyncReason.SNAPSHOT_TOO_OLD,
                                       f"snapshot seqId {book_id} predates the first "
                                       f"update: {rule}")
                return self._break(ResyncReason.SEQUENCE_GAP, rule)
        elif prev != book_id:
            if self._rest:
                self._buffer.append((prev, seq, entry))
            return self._break(ResyncReason.SEQUENCE_GAP,
                               f"expected prevSeqId == {book_id}, got prevSeqId={prev} "
                               f"seqId={seq}")
        bids, asks = entry["bids"], entry["asks"]
        for level in bids:
            self._put(self._bids, level[0], level[1], _orders(level))
        for level in asks:
            self._put(self._asks, level[0], level[1], _orders(level))
        self._truncate()
        self._last_update_id = seq
        self._awaiting_first = False
        self.counters.applied += 1
        if replay:
            return APPLIED
        return self._check(entry) or APPLIED

    def _check(self, entry: Mapping[str, Any]) -> ApplyResult | None:
        """Checksum, else crossed-book check, of the book after ``entry``."""
        checksum = entry.get("checksum")
        if not self.verify_checksum or checksum is None or checksum == 0:
            self.counters.checksums_skipped += 1
            return self._crossed()
        expected = integer(checksum, "checksum")
        self.counters.checksums_verified += 1
        mine = okx_checksum(self._top_raw(Side.BID, OKX_CHECKSUM_LEVELS),
                            self._top_raw(Side.ASK, OKX_CHECKSUM_LEVELS))
        if mine != expected:
            return self._break(ResyncReason.CHECKSUM_MISMATCH,
                               f"checksum {expected} from the venue, {mine} computed "
                               f"(seqId {self._last_update_id})")
        return None

    def _on_break(self) -> None:
        self._fetch_asked = self._rest
        self._awaiting_first = False
        if not self._rest:
            self._buffer.clear()

    def _forget(self) -> None:
        self._buffer.clear()
        self._fetch_asked = False
        self._awaiting_first = False
