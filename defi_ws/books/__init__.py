"""Order books kept in sync with six venues, from snapshots and deltas, by each venue's rules.

Each book is sans-I/O: feed it the venue's decoded messages with
:meth:`OrderBook.apply` (every message of its connection may be passed; others are
IGNORED) and read it while it is LIVE::

    book = OkxBook("BTC-USDT")                       # channel "books"
    result = book.apply(msg)                          # an ApplyResult
    if result.action is ResyncAction.RESUBSCRIBE:     # a gap or a bad checksum
        client.unsubscribe(topic); client.subscribe(topic)
    if book.is_live:
        print(book.best_bid(), book.best_ask(), book.bids(5))

The book never reads a socket or a clock: what it needs from outside it asks for in
``result.action`` (and :attr:`OrderBook.pending_action`): FETCH_SNAPSHOT (a REST snapshot
you fetch: :class:`SnapshotSync` runs your async fetcher), RESUBSCRIBE, or
AWAIT_SNAPSHOT (nothing: the venue pushes one). A book that breaks (sequence gap,
checksum mismatch, crossed book, malformed message) is cleared at once, counted by
reason in :attr:`OrderBook.counters` and recorded in :attr:`OrderBook.last_resync`:
it is never silently wrong, it is empty until it syncs again.

=============  ===================  ===========================  ==================
venue          class                sequencing                   break asks to
=============  ===================  ===========================  ==================
Binance        BinanceBook          ``U``/``u`` (USD-M ``pu``)   FETCH_SNAPSHOT
OKX            OkxBook              ``prevSeqId``/``seqId``,     RESUBSCRIBE (or
                                    CRC32 top 25                 FETCH_SNAPSHOT)
Kraken v2      KrakenBook           CRC32 top 10                 RESUBSCRIBE
Bybit v5       BybitBook            ``u`` (+1, unconfirmed)      RESUBSCRIBE
Coinbase AT    CoinbaseBook         ``sequence_num``             RESUBSCRIBE
Hyperliquid    HyperliquidBook      full book each message       AWAIT_SNAPSHOT
=============  ===================  ===========================  ==================

Each venue module's docstring states its rules, their sources, and what is unconfirmed.
"""

from __future__ import annotations

from defi_ws.books._book import (
    TRANSITIONS,
    ApplyResult,
    BookCounters,
    BookEvent,
    BookState,
    BookUsageError,
    Level,
    OrderBook,
    Outcome,
    Resync,
    ResyncAction,
    ResyncReason,
    Side,
)
from defi_ws.books.aio import SnapshotBook, SnapshotFetcher, SnapshotSync, fetch_snapshot
from defi_ws.books.binance import BinanceBook, BinanceMarket
from defi_ws.books.bybit import BybitBook
from defi_ws.books.checksum import (
    kraken_checksum,
    kraken_checksum_string,
    okx_checksum,
    okx_checksum_string,
)
from defi_ws.books.coinbase import CoinbaseBook
from defi_ws.books.hyperliquid import HyperliquidBook
from defi_ws.books.kraken import KrakenBook
from defi_ws.books.okx import OkxBook, SnapshotSource

__all__ = [
    "TRANSITIONS",
    "ApplyResult",
    "BinanceBook",
    "BinanceMarket",
    "BookCounters",
    "BookEvent",
    "BookState",
    "BookUsageError",
    "BybitBook",
    "CoinbaseBook",
    "HyperliquidBook",
    "KrakenBook",
    "Level",
    "OkxBook",
    "OrderBook",
    "Outcome",
    "Resync",
    "ResyncAction",
    "ResyncReason",
    "Side",
    "SnapshotBook",
    "SnapshotFetcher",
    "SnapshotSource",
    "SnapshotSync",
    "fetch_snapshot",
    "kraken_checksum",
    "kraken_checksum_string",
    "okx_checksum",
    "okx_checksum_string",
]
