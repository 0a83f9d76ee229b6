"""The venue-neutral book: state table, reading, exact numbers, counters, routing."""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defi_ws.books import (
    TRANSITIONS,
    BinanceBook,
    BinanceMarket,
    BookEvent,
    BookState,
    BybitBook,
    CoinbaseBook,
    HyperliquidBook,
    KrakenBook,
    Level,
    OkxBook,
    OrderBook,
    Outcome,
    ResyncAction,
    ResyncReason,
    Side,
)
from defi_ws.books._book import Malformed, number
from defi_ws.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "books"


def live_binance(bids: Any = (("1.0", "1"),), asks: Any = (("2.0", "1"),)) -> BinanceBook:
    book = BinanceBook("BTCUSDT")
    book.apply({"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 1, "b": [], "a": []})
    book.apply_snapshot({"lastUpdateId": 1, "bids": [list(b) for b in bids],
                         "asks": [list(a) for a in asks]})
    assert book.is_live
    return book


def update(book: BinanceBook, bids: Any = (), asks: Any = ()) -> Any:
    last = book.last_update_id
    assert last is not None
    return book.apply({"e": "depthUpdate", "s": "BTCUSDT", "U": last + 1, "u": last + 1,
                       "b": [list(b) for b in bids], "a": [list(a) for a in asks]})


# ---------------------------------------------------------------------- state


def test_transition_table_is_complete() -> None:
    assert set(TRANSITIONS) == {(s, e) for s in BookState for e in BookEvent}
    for (_state, event), target in TRANSITIONS.items():
        expected = {BookEvent.SNAPSHOT: BookState.LIVE, BookEvent.BREAK: BookState.RESYNCING,
                    BookEvent.RESET: BookState.SYNCING}[event]
        assert target is expected


def test_walk_through_every_state() -> None:
    book = live_binance()
    assert book.pending_action is None
    result = book.request_resync("operator")
    assert (result.outcome, result.reason, result.action, result.detail) == (
        Outcome.RESYNC_NEEDED, ResyncReason.USER_REQUESTED, ResyncAction.FETCH_SNAPSHOT,
        "operator")
    assert book.state is BookState.RESYNCING and book.bids() == []
    assert book.last_resync is not None and book.last_resync.state is BookState.LIVE
    book.apply_snapshot({"lastUpdateId": 5, "bids": [], "asks": []})
    assert book.state is BookState.LIVE and book.last_update_id == 5
    book.reset()
    assert book.state is BookState.SYNCING and book.last_update_id is None
    assert book.buffered == 0 and book.counters.snapshots == 2  # counters survive a reset
    assert book.counters.resyncs == {ResyncReason.USER_REQUESTED: 1}


@pytest.mark.parametrize(("book", "action"), [
    (BinanceBook("BTCUSDT"), ResyncAction.FETCH_SNAPSHOT),
    (OkxBook("BTC-USDT"), ResyncAction.RESUBSCRIBE),
    (KrakenBook("BTC/USD"), ResyncAction.RESUBSCRIBE),
    (BybitBook("BTCUSDT", depth=50), ResyncAction.RESUBSCRIBE),
    (CoinbaseBook("BTC-USD"), ResyncAction.RESUBSCRIBE),
    (HyperliquidBook("BTC"), ResyncAction.AWAIT_SNAPSHOT),
])
def test_new_books_wait_for_their_first_snapshot(book: OrderBook, action: ResyncAction) -> None:
    assert book.state is BookState.SYNCING and not book.is_live
    assert book.pending_action is action
    assert book.best_bid() is None and book.best_ask() is None
    assert book.spread() is None and book.mid() is None
    assert repr(book) == f"<{type(book).__name__} {book.symbol} syncing bids=0 asks=0>"


# ---------------------------------------------------------------------- reading


def test_reading_the_book() -> None:
    book = live_binance(bids=[("1.0", "1"), ("1.2", "3"), ("0.8", "2")],
                        asks=[("2.0", "1"), ("1.5", "4")])
    best_bid, best_ask = book.best_bid(), book.best_ask()
    assert best_bid == Level(Decimal("1.2"), Decimal("3"), "1.2", "3")
    assert best_ask is not None and best_ask.price == Decimal("1.5")
    assert [lv.raw_price for lv in book.bids()] == ["1.2", "1.0", "0.8"]
    assert [lv.raw_price for lv in book.bids(2)] == ["1.2", "1.0"]
    assert [lv.raw_price for lv in book.asks(1)] == ["1.5"]
    assert book.bids(0) == [] and book.asks(0) == [] and len(book.bids(99)) == 3
    assert book.levels(Side.ASK) == book.asks() and book.levels(Side.BID, 1) == book.bids(1)
    assert (book.depth_of(Side.BID), book.depth_of(Side.ASK)) == (3, 2)
    assert book.spread() == Decimal("0.3") and book.mid() == Decimal("1.35")


def test_prices_are_exact_and_one_level_per_value() -> None:
    book = live_binance(bids=[("0.10", "1")], asks=[("0.30000000000000001", "1")])
    update(book, bids=[("0.1", "2")])  # the same price, written differently
    assert [(lv.raw_price, lv.raw_size) for lv in book.bids()] == [("0.1", "2")]
    update(book, bids=[("0.100000000000000001", "5")])  # a different price to a Decimal
    assert len(book.bids()) == 2
    assert book.asks()[0].price == Decimal("0.30000000000000001")
    update(book, bids=[("0.1000", "0.000")])  # any zero removes
    assert [lv.raw_price for lv in book.bids()] == ["0.100000000000000001"]


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(ops=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 3),
                              st.sampled_from(["0", "1", "2.5", "0.000", "7.10"])),
                    max_size=60),
       slack=st.sampled_from([0, 1024]))
def test_price_texts_of_one_value_are_one_level(
        ops: list[tuple[int, int, str]], slack: int) -> None:
    """"5", "5.0" and "5.00" are one level (the last text kept), whatever the price
    text cache holds (slack 0: it is emptied all the time)."""
    book = live_binance(bids=[], asks=[("100", "1")])
    book._price_cache_slack = slack  # type: ignore[misc]
    model: dict[Decimal, tuple[str, str]] = {}
    for tick, zeros, size in ops:
        text = f"{tick}." + "0" * zeros if zeros else str(tick)
        assert update(book, bids=[(text, size)]).outcome is Outcome.APPLIED
        if Decimal(size):
            model[Decimal(tick)] = (text, size)
        else:
            model.pop(Decimal(tick), None)
        assert len(book._prices) <= slack + 2 * (len(model) + 1) + 1
    assert [(lv.price, lv.raw_price, lv.raw_size) for lv in book.bids()] == [
        (price, text, size) for price, (text, size) in sorted(model.items(), reverse=True)]


@pytest.mark.parametrize(("raw", "value", "text"), [
    ("1.50", Decimal("1.50"), "1.50"),
    (Decimal("0.00000001"), Decimal("1E-8"), "0.00000001"),
    (7, Decimal(7), "7"),
    ("0", Decimal(0), "0"),
])
def test_number_reads_texts_decimals_and_ints(raw: object, value: Decimal, text: str) -> None:
    assert number(raw) == (value, text)


@pytest.mark.parametrize("raw", [1.5, True, None, "abc", "-1", "NaN", "Infinity", "-0", [1]])
def test_number_refuses_what_may_be_wrong(raw: object) -> None:
    with pytest.raises((Malformed, ArithmeticError)):
        number(raw)


@pytest.mark.parametrize(("make", "problem"), [
    (lambda: BinanceBook(""), "symbol"),
    (lambda: BinanceBook("BTCUSDT", max_buffered=0), "max_buffered"),
    (lambda: OkxBook("BTC-USDT", depth=0), "depth"),
    (lambda: OkxBook("BTC-USDT", max_buffered=-1), "max_buffered"),
    (lambda: BybitBook("BTCUSDT", depth=True), "depth"),
    (lambda: KrakenBook("BTC/USD", depth=7, qty_precision=-1), "qty_precision"),
])
def test_config_errors_name_the_problem(make: Any, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        make()


# ---------------------------------------------------------------------- counting, logging


def test_counters_and_their_plain_copy() -> None:
    book = live_binance()
    update(book, bids=[("1.1", "1")])
    book.apply({"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 1, "b": [], "a": []})
    book.apply({"result": None, "id": 3})
    update(book, bids=[("2.5", "1")])  # crossed
    copy = book.counters.as_dict()
    # stale: the update buffered before live_binance's snapshot, and the replay above.
    assert copy == {
        "applied": 2, "snapshots": 1, "buffered": 1, "buffer_evicted": 0,
        "stale_dropped": 2, "discarded": 0, "ignored": 1, "checksums_verified": 0,
        "checksums_skipped": 0, "resyncs_total": 1, "resyncs": {"crossed_book": 1},
    }


def test_a_resync_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    book = live_binance()
    with caplog.at_level(logging.INFO, logger="defi_ws.books"):
        update(book, bids=[("3.0", "1")])
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.name == "defi_ws.books"
    assert "BTCUSDT" in warning.getMessage() and "crossed_book" in warning.getMessage()
    assert any("live -> resyncing" in r.getMessage() for r in caplog.records
               if r.levelno == logging.INFO)


def test_a_resync_the_user_asked_for_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    book = live_binance()
    with caplog.at_level(logging.DEBUG, logger="defi_ws.books"):
        book.request_resync("rebalance")
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert "user_requested" in caplog.records[0].getMessage()


# ---------------------------------------------------------------------- routing

SAMPLES = json.loads((FIXTURES / "messages.json").read_text())["messages"]

# Each venue's book, and what it does with its own documented sample as a first message.
BOOKS: dict[str, tuple[Any, Outcome]] = {
    "binance-spot": (lambda s: BinanceBook(s), Outcome.BUFFERED),
    "binance-usdm": (lambda s: BinanceBook(s, market=BinanceMarket.USDM), Outcome.BUFFERED),
    "bybit": (lambda s: BybitBook(s, depth=50), Outcome.DISCARDED),
    "okx": (lambda s: OkxBook(s), Outcome.DISCARDED),
    "coinbase": (lambda s: CoinbaseBook(s), Outcome.APPLIED),
    "kraken": (lambda s: KrakenBook(s), Outcome.DISCARDED),
    "hyperliquid": (lambda s: HyperliquidBook(s), Outcome.APPLIED),
}


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["venue"] for s in SAMPLES])
def test_each_book_takes_its_venues_sample_and_ignores_the_others(sample: dict[str, Any]) -> None:
    make, outcome = BOOKS[sample["venue"]]
    book = make(sample["symbol"])
    assert book.apply(sample["message"]).outcome is outcome
    for other in SAMPLES:
        if other is sample:
            continue
        stranger = BOOKS[other["venue"]][0](other["symbol"])
        result = stranger.apply(sample["message"])
        if (other["venue"].startswith("binance") and sample["venue"].startswith("binance")
                and other["symbol"] == sample["symbol"]):
            continue  # the same stream shape: a spot book is not told a USD-M event apart
        assert result.outcome is Outcome.IGNORED, (other["venue"], result)


def test_coinbase_sample_builds_the_documented_book() -> None:
    [sample] = [s for s in SAMPLES if s["venue"] == "coinbase"]
    book = CoinbaseBook("BTC-USD")
    book.apply(sample["message"])
    assert [(lv.raw_price, lv.raw_size) for lv in book.bids()] == [
        ("21921.73", "0.06317902"), ("21921.3", "0.02")]
    assert book.asks() == [] and book.last_update_id == 0


def test_hyperliquid_sample_keeps_order_counts() -> None:
    [sample] = [s for s in SAMPLES if s["venue"] == "hyperliquid"]
    book = HyperliquidBook("BTC")
    book.apply(sample["message"])
    assert [lv.orders for lv in book.bids()] == [5, 2]
    assert book.spread() == Decimal("1.0")


def test_okx_sample_update_is_sequenced_against_the_book() -> None:
    [sample] = [s for s in SAMPLES if s["venue"] == "okx"]
    book = OkxBook("BTC-USDT", verify_checksum=False)
    book.apply({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "snapshot",
                "data": [{"bids": [], "asks": [], "ts": "1", "checksum": 0,
                          "prevSeqId": -1, "seqId": 123456}]})
    assert book.apply(sample["message"]).outcome is Outcome.APPLIED
    best = book.best_ask()
    assert best is not None and (best.raw_price, best.raw_size, best.orders) == (
        "8476.98", "415", 13)
    assert book.last_update_id == 123457


def test_bybit_sample_delta_applies_after_a_snapshot() -> None:
    [sample] = [s for s in SAMPLES if s["venue"] == "bybit"]
    book = BybitBook("BTCUSDT", depth=50)
    book.apply({"topic": "orderbook.50.BTCUSDT", "type": "snapshot", "ts": 1,
                "data": {"s": "BTCUSDT", "b": [["30240.00", "1"]], "a": [["30248.70", "1"]],
                         "u": 177400506, "seq": 66544703300}})
    assert book.apply(sample["message"]).outcome is Outcome.APPLIED
    assert book.best_bid() == Level(Decimal("30247.20"), Decimal("30.028"), "30247.20",
                                    "30.028")
    assert book.best_ask() is not None and book.best_ask().raw_price == "30249.30"  # type: ignore[union-attr]
    assert book.last_seq == 66544703342
