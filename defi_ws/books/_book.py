"""The venue-neutral part of an order book: levels, state, outcomes, counters.

A venue's book (:mod:`defi_ws.books.binance`, ``okx``, ...) subclasses
:class:`OrderBook`: it reads the venue's messages and decides, by the venue's rules,
whether each one is applied, buffered, dropped as stale, or breaks the book. Everything
it decides goes through the few methods here, so every venue counts, logs and resyncs
the same way.

Book state (transitions are the rows of :data:`TRANSITIONS`)::

    SYNCING --snapshot--> LIVE --break--> RESYNCING --snapshot--> LIVE
    any state --reset--> SYNCING;   a snapshot while LIVE stays LIVE

A *break* (a sequence gap, a checksum mismatch, a crossed book, a malformed message,
a user request) clears every level at once: a book that is not LIVE holds no levels, so
reading it can never return a stale or partial book.

Prices and sizes are kept exact: each level holds the venue's text (``raw_price``,
``raw_size``, needed verbatim by OKX's checksum and digit-for-digit by Kraken's) and its
:class:`~decimal.Decimal` value. A side is a dict keyed by the Decimal price plus a
sorted list of those prices (``bisect``), so ``"0.10"`` and ``"0.1"`` are one level,
ordering is exact (no float rounding), and best price and top-N are O(1) and O(N).

Cost: ``Decimal(str)`` is as cheap as ``float(str)`` in CPython (~0.15 us), but hashing
a new Decimal is not (~0.4 us, computed for every new object). So a price text seen
before is not parsed again: a per-book cache maps text -> Decimal (a pure function, so
evicting it is always safe; it is bounded by twice the levels held plus 1024). Measured
on CPython 3.11 (a loaded 2-vCPU VM, so upper bounds): updating a known level ~0.7 us,
a 20-level Binance update on a 1000-level book ~30 us, an OKX update with its 25-level
checksum ~10-15 us.
"""

from __future__ import annotations

import enum
import logging
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple

from defi_ws.errors import ConfigError

__all__ = [
    "TRANSITIONS",
    "ApplyResult",
    "BookCounters",
    "BookEvent",
    "BookState",
    "BookUsageError",
    "Level",
    "OrderBook",
    "Outcome",
    "Resync",
    "ResyncAction",
    "ResyncReason",
    "Side",
]

_log = logging.getLogger("defi_ws.books")


class BookState(enum.Enum):
    """Whether a book can be read.

    Attributes:
        SYNCING: new (or reset): waiting for its first snapshot; holds no levels.
        LIVE: in sync with the venue; every level is the venue's.
        RESYNCING: a break cleared the book; waiting for a fresh snapshot.
    """

    SYNCING = "syncing"
    LIVE = "live"
    RESYNCING = "resyncing"


class BookEvent(enum.Enum):
    """What moves a book between states (the columns of :data:`TRANSITIONS`)."""

    SNAPSHOT = "snapshot"
    BREAK = "break"
    RESET = "reset"


#: Every allowed transition: ``(state, event) -> next state``.
TRANSITIONS: dict[tuple[BookState, BookEvent], BookState] = {
    (BookState.SYNCING, BookEvent.SNAPSHOT): BookState.LIVE,
    (BookState.LIVE, BookEvent.SNAPSHOT): BookState.LIVE,
    (BookState.RESYNCING, BookEvent.SNAPSHOT): BookState.LIVE,
    (BookState.SYNCING, BookEvent.BREAK): BookState.RESYNCING,
    (BookState.LIVE, BookEvent.BREAK): BookState.RESYNCING,
    (BookState.RESYNCING, BookEvent.BREAK): BookState.RESYNCING,
    (BookState.SYNCING, BookEvent.RESET): BookState.SYNCING,
    (BookState.LIVE, BookEvent.RESET): BookState.SYNCING,
    (BookState.RESYNCING, BookEvent.RESET): BookState.SYNCING,
}


class Outcome(enum.Enum):
    """What :meth:`OrderBook.apply` did with one message.

    Attributes:
        APPLIED: the message changed (or replaced) the book, which is LIVE.
        BUFFERED: kept until a snapshot arrives (REST-snapshot venues).
        STALE_DROPPED: older than the book, as the venue's rules allow: dropped, the
            book is unchanged and still right.
        RESYNC_NEEDED: the book broke (see :class:`ResyncReason`); it was cleared and
            waits for a fresh snapshot; :attr:`ApplyResult.action` says how to get one.
        DISCARDED: meant for this book but useless now: the book waits for a snapshot
            the venue streams (a resync is already under way).
        IGNORED: not for this book (another symbol, channel or message type).
    """

    APPLIED = "applied"
    BUFFERED = "buffered"
    STALE_DROPPED = "stale_dropped"
    RESYNC_NEEDED = "resync_needed"
    DISCARDED = "discarded"
    IGNORED = "ignored"


class ResyncReason(enum.Enum):
    """Why a book broke.

    Attributes:
        SEQUENCE_GAP: an update's sequence does not follow the last one applied
            (messages were lost, or arrived out of order).
        SEQUENCE_RESET: the sequence went backwards where the venue's rules do not
            allow dropping the message (a venue restart or a new connection).
        SNAPSHOT_TOO_OLD: the REST snapshot predates the first buffered update.
        CHECKSUM_MISMATCH: the venue's checksum differs from the book's.
        CROSSED_BOOK: best bid >= best ask after a whole message.
        MALFORMED: a message for this book could not be read.
        USER_REQUESTED: :meth:`OrderBook.request_resync`.
    """

    SEQUENCE_GAP = "sequence_gap"
    SEQUENCE_RESET = "sequence_reset"
    SNAPSHOT_TOO_OLD = "snapshot_too_old"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    CROSSED_BOOK = "crossed_book"
    MALFORMED = "malformed"
    USER_REQUESTED = "user_requested"


class ResyncAction(enum.Enum):
    """What the caller must do to bring a broken book back.

    Attributes:
        FETCH_SNAPSHOT: fetch a REST snapshot and pass it to ``apply_snapshot``
            (:class:`~defi_ws.books.aio.SnapshotSync` does it with your fetcher).
        RESUBSCRIBE: unsubscribe and subscribe the book's channel again; the venue
            streams a fresh snapshot.
        AWAIT_SNAPSHOT: nothing: the venue's next message is a full snapshot.
    """

    FETCH_SNAPSHOT = "fetch_snapshot"
    RESUBSCRIBE = "resubscribe"
    AWAIT_SNAPSHOT = "await_snapshot"


class Side(enum.Enum):
    """A side of the book."""

    BID = "bid"
    ASK = "ask"


class Level(NamedTuple):
    """One price level.

    Attributes:
        price: the price, exact.
        size: the total size at that price, exact (never zero: zero removes a level).
        raw_price: the price as the venue wrote it (Kraken books with a configured
            precision: formatted to it).
        raw_size: the size as the venue wrote it (likewise).
        orders: how many orders make up the level, where the venue says
            (Hyperliquid ``n``, OKX's fourth field), else None.
    """

    price: Decimal
    size: Decimal
    raw_price: str
    raw_size: str
    orders: int | None = None


_new_level = tuple.__new__


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What happened to one message.

    Attributes:
        outcome: what was done with it.
        reason: why the book broke (``outcome`` is RESYNC_NEEDED), else None.
        action: what the caller must do now, else None. Given once per break (and,
            on REST-snapshot venues, with the first update buffered while syncing);
            :attr:`OrderBook.pending_action` keeps saying it until the book is LIVE.
        detail: the evidence of a break (expected and received ids, checksums).
    """

    outcome: Outcome
    reason: ResyncReason | None = None
    action: ResyncAction | None = None
    detail: str = ""


APPLIED = ApplyResult(Outcome.APPLIED)
BUFFERED = ApplyResult(Outcome.BUFFERED)
BUFFERED_FETCH = ApplyResult(Outcome.BUFFERED, action=ResyncAction.FETCH_SNAPSHOT)
STALE_DROPPED = ApplyResult(Outcome.STALE_DROPPED)
DISCARDED = ApplyResult(Outcome.DISCARDED)
IGNORED = ApplyResult(Outcome.IGNORED)


@dataclass(frozen=True, slots=True)
class Resync:
    """One break of a book, as recorded in :attr:`OrderBook.last_resync`.

    Attributes:
        reason: why it broke.
        action: what was asked of the caller.
        detail: the evidence.
        state: the state the book was in when it broke.
    """

    reason: ResyncReason
    action: ResyncAction
    detail: str
    state: BookState


@dataclass(slots=True)
class BookCounters:
    """Totals of one book since it was made (a reset keeps them).

    Attributes:
        applied: updates applied (buffered ones included, when replayed).
        snapshots: snapshots loaded (streamed or REST).
        buffered: updates buffered while waiting for a REST snapshot.
        buffer_evicted: buffered updates evicted by the buffer bound (a snapshot older
            than the oldest kept update is then refused as too old: never a gap).
        stale_dropped: messages dropped as older than the book.
        discarded: messages discarded while a streamed snapshot was awaited.
        ignored: messages not for this book.
        checksums_verified: checksums compared (and matched or not).
        checksums_skipped: checksums absent or disabled by the venue (OKX sends 0).
        resyncs: breaks per reason.
    """

    applied: int = 0
    snapshots: int = 0
    buffered: int = 0
    buffer_evicted: int = 0
    stale_dropped: int = 0
    discarded: int = 0
    ignored: int = 0
    checksums_verified: int = 0
    checksums_skipped: int = 0
    resyncs: dict[ResyncReason, int] = field(default_factory=dict)

    @property
    def resyncs_total(self) -> int:
        """Breaks of every reason."""
        return sum(self.resyncs.values())

    def as_dict(self) -> dict[str, Any]:
        """A plain copy (reasons by their value), for logs and metrics."""
        return {
            "applied": self.applied,
            "snapshots": self.snapshots,
            "buffered": self.buffered,
            "buffer_evicted": self.buffer_evicted,
            "stale_dropped": self.stale_dropped,
            "discarded": self.discarded,
            "ignored": self.ignored,
            "checksums_verified": self.checksums_verified,
            "checksums_skipped": self.checksums_skipped,
            "resyncs_total": self.resyncs_total,
            "resyncs": {reason.value: n for reason, n in self.resyncs.items()},
        }


class BookUsageError(TypeError):
    """The book was fed something it cannot check (a programming error, raised).

    Example: Kraken prices decoded as floats without the instrument's precision: the
    checksum needs the venue's digits, which a float has lost.
    """


class Malformed(Exception):
    """A message for this book that cannot be read (internal; becomes MALFORMED)."""


#: Exceptions that reading a venue message may raise: each becomes a MALFORMED break.
MALFORMED_ERRORS = (
    Malformed, KeyError, IndexError, TypeError, ValueError, ArithmeticError, AttributeError,
)


def number(raw: object) -> tuple[Decimal, str]:
    """Read one price or size: its exact value and its text.

    Args:
        raw: a JSON string (the venues' usual form), a Decimal (a decoder that keeps
            floats exact) or an int.

    Returns:
        ``(value, text)``; a Decimal's text is its fixed-point form.

    Raises:
        Malformed: not a finite, non-negative number of those types (a float is
            refused: it may have lost the venue's digits).
    """
    if type(raw) is str:
        value = Decimal(raw)
        text = raw
    elif isinstance(raw, Decimal):
        value = raw
        text = format(raw, "f")
    elif type(raw) is int:
        value = Decimal(raw)
        text = str(raw)
    else:
        raise Malformed(f"a number as a string expected, got {type(raw).__name__}")
    if not value.is_finite() or value.is_signed():
        raise Malformed(f"not a finite non-negative number: {raw!r}")
    return value, text


def integer(raw: object, name: str) -> int:
    """Read an integer field (a sequence id); ``bool`` and text are refused."""
    if type(raw) is not int:
        raise Malformed(f"{name} must be an integer, got {raw!r}")
    return raw


class _BookSide:
    """One side: levels by exact price plus the prices in ascending order."""

    __slots__ = ("keys", "levels")

    def __init__(self) -> None:
        self.levels: dict[Decimal, Level] = {}
        self.keys: list[Decimal] = []

    def put(self, level: Level) -> None:
        price = level.price
        if price not in self.levels:
            insort(self.keys, price)
        self.levels[price] = level

    def remove(self, price: Decimal) -> None:
        if self.levels.pop(price, None) is not None:
            del self.keys[bisect_left(self.keys, price)]

    def clear(self) -> None:
        self.levels.clear()
        self.keys.clear()


class OrderBook:
    """An order book kept in sync with one venue's book of one instrument (sans-I/O).

    Feed it the venue's decoded messages (``orjson`` dicts) with :meth:`apply`, in the
    order received; read it while :attr:`state` is LIVE. It never reads a clock, a
    socket or an event loop: what it needs from outside (a REST snapshot, a
    resubscribe) it asks for with :attr:`ApplyResult.action`.

    Subclasses: :class:`~defi_ws.books.BinanceBook`, :class:`~defi_ws.books.OkxBook`,
    :class:`~defi_ws.books.KrakenBook`, :class:`~defi_ws.books.BybitBook`,
    :class:`~defi_ws.books.CoinbaseBook`, :class:`~defi_ws.books.HyperliquidBook`.

    Args:
        symbol: the instrument, as the venue writes it in messages.
        depth: levels kept per side: after each message the book is truncated to it
            (venues whose stream covers only the top N levels send no removal for a
            level pushed out of scope). None keeps every level.
        reject_crossed: break with CROSSED_BOOK when best bid >= best ask after a
            whole message whose checksum (if any) was not verified. No venue promises
            an uncrossed book in writing; a matching engine never rests one, so a
            crossed local book means a missed update. Turn off for a venue where you
            see legitimate crosses.
        resync_action: what a break asks of the caller.

    Attributes:
        symbol: the instrument.
        depth: levels kept per side, or None.
        reject_crossed: as given.
        counters: totals (:class:`BookCounters`).
    """

    #: The venue's name, for logs.
    venue: ClassVar[str] = ""
    #: Price texts cached beyond twice the levels held before the cache is emptied.
    _price_cache_slack: ClassVar[int] = 1024

    def __init__(
        self,
        symbol: str,
        *,
        depth: int | None = None,
        reject_crossed: bool = True,
        resync_action: ResyncAction,
    ) -> None:
        if not isinstance(symbol, str) or not symbol:
            raise ConfigError([f"symbol must be a non-empty string, got {symbol!r}"])
        if depth is not None and (type(depth) is not int or depth < 1):
            raise ConfigError([f"depth must be an int >= 1 or None, got {depth!r}"])
        self.symbol = symbol
        self.depth = depth
        self.reject_crossed = reject_crossed
        self.counters = BookCounters()
        self._default_action = resync_action
        self._pending_action = resync_action
        self._bids = _BookSide()
        self._asks = _BookSide()
        self._prices: dict[str, Decimal] = {}
        self._state = BookState.SYNCING
        self._last_resync: Resync | None = None
        self._last_update_id: int | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> BookState:
        """SYNCING, LIVE or RESYNCING."""
        return self._state

    @property
    def is_live(self) -> bool:
        """True when the book is in sync and may be read."""
        return self._state is BookState.LIVE

    @property
    def pending_action(self) -> ResyncAction | None:
        """What the book waits for while not LIVE, else None."""
        return None if self._state is BookState.LIVE else self._pending_action

    @property
    def last_resync(self) -> Resync | None:
        """The latest break, or None."""
        return self._last_resync

    @property
    def last_update_id(self) -> int | None:
        """The venue's id of the last change applied (Binance ``u``, OKX ``seqId``,
        Bybit ``u``, Coinbase ``sequence_num``, Hyperliquid ``time``), or None."""
        return self._last_update_id

    def apply(self, message: Mapping[str, Any]) -> ApplyResult:
        """Apply one decoded venue message.

        Args:
            message: the message as decoded (a dict); messages not for this book are
                IGNORED, so a connection's every message may be passed.

        Returns:
            What was done; on RESYNC_NEEDED the book is empty until it syncs again.

        Raises:
            BookUsageError: the book cannot check what it was given (see there).
        """
        try:
            return self._apply(message)
        except BookUsageError:
            raise
        except MALFORMED_ERRORS as exc:
            return self._break(ResyncReason.MALFORMED, f"{type(exc).__name__}: {exc}")

    def _apply(self, message: Mapping[str, Any]) -> ApplyResult:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything but the counters: back to SYNCING (e.g. on a reconnect).

        Not required for correctness (the next message breaks or resyncs the book by
        the venue's rules), but it saves a break on a new connection.
        """
        self._clear_levels()
        self._last_update_id = None
        self._pending_action = self._default_action
        self._forget()
        self._transition(BookEvent.RESET)

    def request_resync(self, detail: str = "") -> ApplyResult:
        """Break the book on purpose (USER_REQUESTED): it clears and asks for a sync."""
        return self._break(ResyncReason.USER_REQUESTED, detail or "requested")

    # ------------------------------------------------------------------ reading

    def best_bid(self) -> Level | None:
        """The highest bid, or None."""
        keys = self._bids.keys
        return self._bids.levels[keys[-1]] if keys else None

    def best_ask(self) -> Level | None:
        """The lowest ask, or None."""
        keys = self._asks.keys
        return self._asks.levels[keys[0]] if keys else None

    def bids(self, n: int | None = None) -> list[Level]:
        """The best ``n`` bids (all when None), best first."""
        keys = self._bids.keys
        chosen = keys[::-1] if n is None else keys[: -n - 1 : -1] if n > 0 else []
        levels = self._bids.levels
        return [levels[p] for p in chosen]

    def asks(self, n: int | None = None) -> list[Level]:
        """The best ``n`` asks (all when None), best first."""
        keys = self._asks.keys
        chosen = keys if n is None else keys[:n] if n > 0 else []
        levels = self._asks.levels
        return [levels[p] for p in chosen]

    def levels(self, side: Side, n: int | None = None) -> list[Level]:
        """The best ``n`` levels of ``side``, best first."""
        return self.bids(n) if side is Side.BID else self.asks(n)

    def depth_of(self, side: Side) -> int:
        """How many levels ``side`` holds."""
        return len(self._bids.keys if side is Side.BID else self._asks.keys)

    def spread(self) -> Decimal | None:
        """Best ask minus best bid, or None when a side is empty."""
        if not self._bids.keys or not self._asks.keys:
            return None
        return self._asks.keys[0] - self._bids.keys[-1]

    def mid(self) -> Decimal | None:
        """The mid price, or None when a side is empty."""
        if not self._bids.keys or not self._asks.keys:
            return None
        return (self._asks.keys[0] + self._bids.keys[-1]) / 2

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.symbol} {self._state.value} "
            f"bids={len(self._bids.keys)} asks={len(self._asks.keys)}>"
        )

    # ------------------------------------------------------------------ for venues

    def _forget(self) -> None:
        """Drop venue-specific sync state (buffers, pending flags). Override."""

    def _transition(self, event: BookEvent) -> None:
        """The one place the state changes (and is logged)."""
        new = TRANSITIONS[(self._state, event)]
        if new is not self._state:
            _log.info("%s book %s: %s -> %s", self.venue, self.symbol,
                      self._state.value, new.value)
            self._state = new

    def _clear_levels(self) -> None:
        self._bids.clear()
        self._asks.clear()

    def _put(self, side: _BookSide, raw_price: object, raw_size: object,
             orders: int | None = None) -> None:
        """Set one level from the venue's texts; a zero size removes it.

        A price text seen before is not parsed again: ``_prices`` caches text ->
        Decimal (a pure function, so any eviction is safe). The cached Decimal keeps its
        hash, which CPython computes anew for every new Decimal (~0.4 us), so updating
        a known level costs two dict look-ups instead of a parse and a hash.
        """
        if type(raw_price) is str:
            price = self._prices.get(raw_price)
            if price is None:
                price = number(raw_price)[0]
                if not price:
                    raise Malformed(f"price 0: {raw_price!r}")
                prices = self._prices
                if len(prices) > self._price_cache_slack + 2 * (len(self._bids.keys)
                                                                + len(self._asks.keys)):
                    prices.clear()  # aliases and removed levels: bounded
                prices[raw_price] = price
            price_text = raw_price
        else:
            price, price_text = number(raw_price)
            if not price:
                raise Malformed(f"price 0: {raw_price!r}")
        if type(raw_size) is str:
            size = Decimal(raw_size)
            if not size.is_finite() or size.is_signed():
                raise Malformed(f"not a finite non-negative number: {raw_size!r}")
            size_text = raw_size
        else:
            size, size_text = number(raw_size)
        if size:
            side.put(_new_level(Level, (price, size, price_text, size_text, orders)))
        else:
            side.remove(price)
            self._prices.pop(price_text, None)

    def _put_level(self, side: _BookSide, level: Level) -> None:
        """Set one already-read level; a zero size removes it."""
        if level.size:
            side.put(level)
        else:
            side.remove(level.price)

    def _snapshot_loaded(self, update_id: int | None) -> None:
        """A full book was just loaded: count it, go LIVE."""
        self._last_update_id = update_id
        self.counters.snapshots += 1
        self._transition(BookEvent.SNAPSHOT)

    def _truncate(self) -> None:
        depth = self.depth
        if depth is None:
            return
        bids, asks = self._bids, self._asks
        if len(bids.keys) > depth:
            cut = len(bids.keys) - depth
            for price in bids.keys[:cut]:
                del bids.levels[price]
            del bids.keys[:cut]
        if len(asks.keys) > depth:
            for price in asks.keys[depth:]:
                del asks.levels[price]
            del asks.keys[depth:]

    def _crossed(self) -> ApplyResult | None:
        """A CROSSED_BOOK break if the book is crossed (and that is checked), else None."""
        if self.reject_crossed:
            bids, asks = self._bids.keys, self._asks.keys
            if bids and asks and bids[-1] >= asks[0]:
                return self._break(ResyncReason.CROSSED_BOOK,
                                   f"best bid {bids[-1]} >= best ask {asks[0]}")
        return None

    def _top_raw(self, side: Side, n: int) -> list[tuple[str, str]]:
        """The best ``n`` levels of ``side`` as the venue's texts (for checksums)."""
        if side is Side.BID:
            book = self._bids
            keys = book.keys[: -n - 1 : -1]
        else:
            book = self._asks
            keys = book.keys[:n]
        levels = book.levels
        return [levels[price][2:4] for price in keys]  # (raw_price, raw_size)

    def _break(self, reason: ResyncReason, detail: str,
               action: ResyncAction | None = None) -> ApplyResult:
        """The book is wrong or cannot be known right: clear it, count, ask for a sync."""
        action = action or self._default_action
        self._pending_action = action
        record = Resync(reason, action, detail, self._state)
        self._last_resync = record
        resyncs = self.counters.resyncs
        resyncs[reason] = resyncs.get(reason, 0) + 1
        # Log level follows blame: a break the user asked for is not a warning.
        _log.log(logging.INFO if reason is ResyncReason.USER_REQUESTED else logging.WARNING,
                 "%s book %s: resync (%s, %s): %s", self.venue, self.symbol, reason.value,
                 action.value, detail)
        self._clear_levels()
        self._last_update_id = None
        self._on_break()
        self._transition(BookEvent.BREAK)
        return ApplyResult(Outcome.RESYNC_NEEDED, reason, action, detail)

    def _on_break(self) -> None:
        """Venue-specific clean-up of a break (e.g. what the buffer keeps). Override."""
