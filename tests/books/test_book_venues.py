"""Each venue's sequencing rules, one table row or scenario per rule."""

from __future__ import annotations

from typing import Any

import pytest

from defi_ws.books import (
    BinanceBook,
    BinanceMarket,
    BookState,
    BybitBook,
    CoinbaseBook,
    HyperliquidBook,
    KrakenBook,
    OkxBook,
    Outcome,
    ResyncAction,
    ResyncReason,
    Side,
    SnapshotSource,
    kraken_checksum,
    okx_checksum,
)

A = Outcome.APPLIED
B = Outcome.BUFFERED
S = Outcome.STALE_DROPPED
R = Outcome.RESYNC_NEEDED
D = Outcome.DISCARDED
I = Outcome.IGNORED  # noqa: E741


def pairs(levels: list[Any]) -> list[tuple[str, str]]:
    return [(lv.raw_price, lv.raw_size) for lv in levels]


# ---------------------------------------------------------------------- Binance


def depth(first: int, last: int, bids: Any = (), asks: Any = (), prev: int | None = None,
          symbol: str = "BNBBTC") -> dict[str, Any]:
    event: dict[str, Any] = {"e": "depthUpdate", "E": 1, "s": symbol, "U": first, "u": last,
                             "b": [list(b) for b in bids], "a": [list(a) for a in asks]}
    if prev is not None:
        event["pu"] = prev
    return event


def rest(last_id: int, bids: Any = (("1.0", "1"),), asks: Any = (("2.0", "1"),)) -> dict[str, Any]:
    return {"lastUpdateId": last_id, "bids": [list(b) for b in bids],
            "asks": [list(a) for a in asks]}


def test_binance_buffers_until_the_snapshot_and_asks_for_it_once() -> None:
    book = BinanceBook("bnbbtc")
    first = book.apply(depth(157, 160, bids=[("0.0024", "10")]))
    assert (first.outcome, first.action) == (B, ResyncAction.FETCH_SNAPSHOT)
    second = book.apply(depth(161, 161))
    assert (second.outcome, second.action) == (B, None)
    assert book.state is BookState.SYNCING and book.needs_snapshot and book.buffered == 2
    assert book.pending_action is ResyncAction.FETCH_SNAPSHOT
    assert book.bids() == []


@pytest.mark.parametrize(("last_id", "applied", "dropped"), [
    (156, 2, 0),   # U=157 <= 157 <= u=160: the first straddles
    (158, 2, 0),   # inside the first update
    (159, 2, 0),   # U <= 160 <= u
    (160, 1, 1),   # u <= lastUpdateId: dropped; the next (161) straddles 161
    (161, 0, 2),   # every buffered update is in the snapshot already
])
def test_binance_spot_first_update_straddles_last_update_id_plus_one(
        last_id: int, applied: int, dropped: int) -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(157, 160, bids=[("1.1", "10")]))
    book.apply(depth(161, 161, asks=[("1.9", "100")]))
    assert book.apply_snapshot(rest(last_id)).outcome is A
    assert book.is_live and book.last_update_id == max(last_id, 161)
    assert (book.counters.applied, book.counters.stale_dropped) == (applied, dropped)
    assert book.apply(depth(max(last_id, 161) + 1, max(last_id, 161) + 3)).outcome is A


def test_binance_snapshot_older_than_the_first_buffered_update_is_fetched_again() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(200, 205))
    result = book.apply_snapshot(rest(150))  # needs U <= 151: 200 is beyond
    assert (result.outcome, result.reason, result.action) == (
        R, ResyncReason.SNAPSHOT_TOO_OLD, ResyncAction.FETCH_SNAPSHOT)
    assert book.state is BookState.RESYNCING and book.buffered == 1  # the buffer is kept
    assert book.bids() == []
    assert book.apply_snapshot(rest(203)).outcome is A
    assert book.is_live and book.last_update_id == 205


def test_binance_gap_inside_the_buffer_is_a_sequence_gap() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(100, 105))
    book.apply(depth(110, 115))  # 106..109 never arrived
    result = book.apply_snapshot(rest(107))
    assert result.reason is ResyncReason.SEQUENCE_GAP
    assert "U=110" in result.detail


def test_binance_spot_live_rules() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(10, bids=[("1.0", "5")], asks=[("2.0", "5")]))
    rows = [
        (depth(13, 15, bids=[("1.5", "2")]), A, None),
        (depth(16, 16, bids=[("1.5", "0")]), A, None),          # 0 removes
        (depth(17, 17, asks=[("9.9", "0")]), A, None),          # removing an unknown level
        (depth(12, 17), S, None),                                # u <= last: already in
        (depth(17, 18, asks=[("2.0", "7")]), A, None),           # overlap: exact to apply
        (depth(20, 21), R, ResyncReason.SEQUENCE_GAP),           # U > last + 1
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason), message
    assert book.counters.applied == 5  # 11-12 on the snapshot, then 13-15, 16, 17, 17-18
    assert book.last_resync is not None
    assert book.last_resync.detail == "expected U <= 19, got U=20 u=21"


def test_binance_spot_strict_sequence_refuses_overlaps() -> None:
    book = BinanceBook("BNBBTC", strict_sequence=True)
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(10))
    assert book.apply(depth(13, 15)).outcome is A
    result = book.apply(depth(15, 16))
    assert (result.reason, result.detail) == (ResyncReason.SEQUENCE_GAP,
                                              "expected U == 16, got U=15 u=16")


def test_binance_live_gap_clears_the_book_and_keeps_the_update_for_the_next_snapshot() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(12))
    assert book.best_bid() is not None
    result = book.apply(depth(14, 15, bids=[("1.1", "1")]))  # 13 lost
    assert (result.outcome, result.reason, result.action) == (
        R, ResyncReason.SEQUENCE_GAP, ResyncAction.FETCH_SNAPSHOT)
    # The first update after the snapshot must straddle it (the buffered 11-12 was in it).
    assert result.detail == "expected U <= 13 <= u, got U=14 u=15"
    assert book.state is BookState.RESYNCING and book.bids() == [] and book.asks() == []
    assert book.last_resync is not None and book.last_resync.state is BookState.LIVE
    assert book.apply(depth(16, 16)).action is None  # already asked
    assert book.apply_snapshot(rest(14)).outcome is A  # replays 14-15 (straddles 15), 16
    assert book.last_update_id == 16 and book.best_bid() is not None
    assert book.counters.resyncs == {ResyncReason.SEQUENCE_GAP: 1}


def test_binance_snapshot_while_live_is_not_used() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(12))
    assert book.apply_snapshot(rest(50)).outcome is S
    assert book.last_update_id == 12


def test_binance_buffer_is_bounded_oldest_first() -> None:
    book = BinanceBook("BNBBTC", max_buffered=2)
    for first in (1, 2, 3):
        book.apply(depth(first, first))
    assert book.buffered == 2 and book.counters.buffer_evicted == 1
    # A snapshot at 0 would need update 1, evicted: too old, never a silent gap.
    assert book.apply_snapshot(rest(0)).reason is ResyncReason.SNAPSHOT_TOO_OLD
    assert book.apply_snapshot(rest(1)).outcome is A


def test_binance_combined_stream_other_symbols_and_acks() -> None:
    book = BinanceBook("BNBBTC")
    assert book.apply({"stream": "bnbbtc@depth", "data": depth(1, 2)}).outcome is B
    assert book.apply({"stream": "ethbtc@depth", "data": depth(1, 2, symbol="ETHBTC")}).outcome is I
    assert book.apply({"result": None, "id": 1}).outcome is I
    assert book.apply({"e": "trade", "s": "BNBBTC"}).outcome is I
    assert book.counters.ignored == 3


@pytest.mark.parametrize("event", [
    {**depth(5, 4)},                                   # U > u
    {**depth(1, 2), "U": "1"},                         # ids must be ints
    {**depth(1, 2), "U": True},
    {k: v for k, v in depth(1, 2).items() if k != "u"},
])
def test_binance_malformed_updates_break_the_book(event: dict[str, Any]) -> None:
    book = BinanceBook("BNBBTC")
    result = book.apply(event)
    assert (result.outcome, result.reason) == (R, ResyncReason.MALFORMED)


@pytest.mark.parametrize("level", [["abc", "1"], ["1.0", "-1"], ["1.0", "NaN"], ["0", "1"],
                                   ["1.0", 1.5], ["1.0"]])
def test_binance_malformed_levels_break_the_book(level: list[Any]) -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(12))
    result = book.apply({**depth(13, 13), "b": [level]})
    assert result.reason is ResyncReason.MALFORMED
    assert not book.is_live and book.bids() == []
    snapshot = BinanceBook("BNBBTC")
    snapshot.apply(depth(11, 12))
    assert snapshot.apply_snapshot({**rest(12), "asks": [level]}).reason is ResyncReason.MALFORMED


def test_binance_crossed_book_after_an_update_breaks_it() -> None:
    book = BinanceBook("BNBBTC")
    book.apply(depth(11, 12))
    book.apply_snapshot(rest(12, bids=[("1.0", "1")], asks=[("2.0", "1")]))
    result = book.apply(depth(13, 13, bids=[("2.0", "1")]))
    assert result.reason is ResyncReason.CROSSED_BOOK
    assert "best bid 2.0 >= best ask 2.0" in result.detail
    lax = BinanceBook("BNBBTC", reject_crossed=False)
    lax.apply(depth(11, 12))
    lax.apply_snapshot(rest(12))
    assert lax.apply(depth(13, 13, bids=[("2.0", "1")])).outcome is A


def test_binance_usdm_rules() -> None:
    book = BinanceBook("BTCUSDT", market=BinanceMarket.USDM)
    assert book.apply(depth(140, 150, prev=130, symbol="BTCUSDT")).outcome is B
    assert book.apply(depth(155, 158, prev=150, symbol="BTCUSDT")).outcome is B
    # u < lastUpdateId dropped; u == lastUpdateId kept: U=155 <= 158 <= u=158.
    assert book.apply_snapshot(rest(158)).outcome is A
    assert (book.counters.stale_dropped, book.counters.applied) == (1, 1)
    rows = [
        (depth(170, 175, prev=158, symbol="BTCUSDT"), A, None),   # pu == previous u
        (depth(170, 175, prev=158, symbol="BTCUSDT"), S, None),   # u <= last
        (depth(180, 185, prev=170, symbol="BTCUSDT"), R, ResyncReason.SEQUENCE_GAP),
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason)
    assert book.last_resync is not None and "pu == 175" in book.last_resync.detail


def test_binance_usdm_first_update_must_contain_last_update_id() -> None:
    book = BinanceBook("BTCUSDT", market=BinanceMarket.USDM)
    book.apply(depth(160, 165, prev=150, symbol="BTCUSDT"))
    result = book.apply_snapshot(rest(158))  # needs U <= 158: 160 is beyond
    assert result.reason is ResyncReason.SNAPSHOT_TOO_OLD
    assert "U <= 158 <= u" in result.detail
    book2 = BinanceBook("BTCUSDT", market=BinanceMarket.USDM)
    book2.apply(depth(160, 165, prev=150, symbol="BTCUSDT"))
    assert book2.apply_snapshot(rest(160)).outcome is A
    assert book2.last_update_id == 165


def test_binance_usdm_needs_pu() -> None:
    book = BinanceBook("BTCUSDT", market=BinanceMarket.USDM)
    assert book.apply(depth(1, 2, symbol="BTCUSDT")).reason is ResyncReason.MALFORMED


# ---------------------------------------------------------------------- OKX


def okx(action: str | None, bids: Any, asks: Any, seq: int, prev: int,
        checksum: int | None = None, channel: str = "books") -> dict[str, Any]:
    entry: dict[str, Any] = {"bids": [[p, s, "0", "1"] for p, s in bids],
                             "asks": [[p, s, "0", "1"] for p, s in asks],
                             "ts": "1", "seqId": seq, "prevSeqId": prev}
    if checksum is not None:
        entry["checksum"] = checksum
    message: dict[str, Any] = {"arg": {"channel": channel, "instId": "BTC-USDT"},
                               "data": [entry]}
    if action is not None:
        message["action"] = action
    return message


def test_okx_snapshot_then_chained_updates() -> None:
    book = OkxBook("BTC-USDT")
    assert book.pending_action is ResyncAction.RESUBSCRIBE
    assert book.apply(okx("update", [], [], 5, 4)).outcome is D  # before the snapshot
    snap = okx("snapshot", [("10", "1")], [("11", "2")], 10, -1,
               okx_checksum([("10", "1")], [("11", "2")]))
    assert book.apply(snap).outcome is A and book.last_update_id == 10
    rows = [
        (okx("update", [("10", "3")], [], 15, 10,
             okx_checksum([("10", "3")], [("11", "2")])), A, None),
        (okx("update", [], [], 15, 15, okx_checksum([("10", "3")], [("11", "2")])), A, None),
        (okx("update", [("9", "1")], [], 3, 15, 0), A, None),   # reset after maintenance
        (okx("update", [], [("12", "1")], 5, 3), A, None),      # no checksum field
        (okx("update", [], [], 9, 7), R, ResyncReason.SEQUENCE_GAP),
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason), message
    assert book.counters.checksums_verified == 3 and book.counters.checksums_skipped == 2
    assert book.last_resync is not None
    assert book.last_resync.detail == "expected prevSeqId == 5, got prevSeqId=7 seqId=9"
    assert book.last_resync.action is ResyncAction.RESUBSCRIBE
    assert book.apply(okx("update", [], [], 10, 9)).outcome is D
    assert book.apply(okx("snapshot", [("10", "1")], [("11", "1")], 20, -1)).outcome is A


def test_okx_checksum_mismatch_and_zero_checksum() -> None:
    book = OkxBook("BTC-USDT")
    book.apply(okx("snapshot", [("10", "1")], [("11", "2")], 10, -1, 0))
    assert book.counters.checksums_skipped == 1 and book.is_live  # 0: deprecated, skipped
    result = book.apply(okx("update", [("10", "2")], [], 11, 10, 12345))
    assert result.reason is ResyncReason.CHECKSUM_MISMATCH
    assert "checksum 12345 from the venue" in result.detail
    lax = OkxBook("BTC-USDT", verify_checksum=False)
    lax.apply(okx("snapshot", [("10", "1")], [("11", "2")], 10, -1, 1))
    assert lax.is_live and lax.counters.checksums_skipped == 1


def test_okx_truncates_to_the_channel_depth() -> None:
    book = OkxBook("BTC-USDT", channel="books5")
    assert book.depth == 5
    levels = [(str(100 - i), "1") for i in range(7)]
    asks = [(str(200 + i), "1") for i in range(7)]
    # books5 pushes have no action: each is the whole book.
    assert book.apply(okx(None, levels, asks, 1, -1, channel="books5")).outcome is A
    assert [p for p, _ in pairs(book.bids())] == ["100", "99", "98", "97", "96"]
    assert book.apply(okx(None, levels[:1], asks[:1], 2, -1, channel="books5")).outcome is A
    assert (book.depth_of(Side.BID), book.depth_of(Side.ASK)) == (1, 1)
    assert OkxBook("BTC-USDT", channel="books50-l2-tbt").depth == 50
    assert OkxBook("BTC-USDT").depth == 400


def test_okx_ignores_events_other_instruments_and_channels() -> None:
    book = OkxBook("BTC-USDT")
    assert book.apply({"event": "subscribe", "arg": {"channel": "books",
                                                     "instId": "BTC-USDT"}}).outcome is I
    other = okx("snapshot", [], [], 1, -1)
    other["arg"] = {"channel": "books", "instId": "ETH-USDT"}
    assert book.apply(other).outcome is I
    assert book.apply(okx("snapshot", [], [], 1, -1, channel="books5")).outcome is I
    empty = okx("snapshot", [], [], 1, -1)
    empty["data"] = []
    assert book.apply(empty).outcome is I and book.counters.ignored == 4
    assert book.apply(okx("refresh", [], [], 1, -1)).reason is ResyncReason.MALFORMED


def test_okx_rest_snapshot_flow() -> None:
    book = OkxBook("BTC-USDT", snapshot_source=SnapshotSource.REST)
    assert book.pending_action is ResyncAction.FETCH_SNAPSHOT
    first = book.apply(okx("update", [("10", "1")], [], 101, 100))
    assert (first.outcome, first.action) == (B, ResyncAction.FETCH_SNAPSHOT)
    assert book.apply(okx("update", [("10", "2")], [], 103, 101)).outcome is B
    assert book.apply(okx("update", [("10", "3")], [], 105, 103)).outcome is B
    # prevSeqId <= snapshot seqId < seqId: 101 <= 102 < 103.
    snapshot = {"code": "0", "data": [{"bids": [["10", "1", "0", "1"]],
                                       "asks": [["20", "1", "0", "1"]], "ts": "1",
                                       "seqId": "102"}]}
    assert book.apply_snapshot(snapshot).outcome is A
    assert book.counters.stale_dropped == 1 and book.last_update_id == 105
    assert pairs(book.bids()) == [("10", "3")]
    result = book.apply(okx("update", [], [], 110, 107))
    assert (result.reason, result.action) == (ResyncReason.SEQUENCE_GAP,
                                              ResyncAction.FETCH_SNAPSHOT)
    assert book.apply_snapshot({"bids": [], "asks": [], "seqId": 90}).reason is (
        ResyncReason.SNAPSHOT_TOO_OLD)
    assert book.apply_snapshot({"bids": [], "asks": []}).reason is ResyncReason.MALFORMED
    assert book.apply_snapshot({"bids": [], "asks": [], "seqId": 108}).outcome is A


def test_okx_streamed_snapshot_also_syncs_a_rest_book() -> None:
    book = OkxBook("BTC-USDT", snapshot_source=SnapshotSource.REST)
    book.apply(okx("update", [("10", "1")], [], 101, 100))
    assert book.apply(okx("snapshot", [("10", "5")], [], 110, -1)).outcome is A
    assert book.apply(okx("update", [], [], 111, 110)).outcome is A
    assert book.apply_snapshot({"bids": [], "asks": [], "seqId": 200}).outcome is S


# ---------------------------------------------------------------------- Kraken


def kraken(kind: str, bids: Any, asks: Any, checksum: int | None,
           symbol: str = "BTC/USD") -> dict[str, Any]:
    entry: dict[str, Any] = {"symbol": symbol,
                             "bids": [{"price": p, "qty": q} for p, q in bids],
                             "asks": [{"price": p, "qty": q} for p, q in asks]}
    if checksum is not None:
        entry["checksum"] = checksum
    return {"channel": "book", "type": kind, "data": [entry]}


def test_kraken_truncates_to_depth_and_verifies_the_top_10() -> None:
    book = KrakenBook("BTC/USD", depth=10)
    bids = [(f"{100 - i}.0", "1.00000000") for i in range(10)]
    asks = [(f"{200 + i}.0", "1.00000000") for i in range(10)]
    assert book.apply(kraken("update", [], [], None)).outcome is D
    assert book.apply(kraken("snapshot", bids, asks, kraken_checksum(asks=asks, bids=bids))
                      ).outcome is A
    # An insert at the top pushes the 10th bid out; Kraken sends no removal for it.
    new_bids = [("100.5", "2.00000000"), *bids[:9]]
    result = book.apply(kraken("update", [("100.5", "2.00000000")], [],
                               kraken_checksum(asks=asks, bids=new_bids)))
    assert result.outcome is A and pairs(book.bids()) == new_bids
    # The same level twice in one message: the last wins.
    twice = [("100.5", "3.00000000"), ("100.5", "4.00000000")]
    final = [("100.5", "4.00000000"), *bids[:9]]
    assert book.apply(kraken("update", twice, [], kraken_checksum(asks=asks, bids=final))
                      ).outcome is A
    # qty 0 removes.
    assert book.apply(kraken("update", [("100.5", "0")], [],
                             kraken_checksum(asks=asks, bids=bids[:9]))).outcome is A
    assert book.counters.checksums_verified == 4
    result = book.apply(kraken("update", [("99.0", "5.00000000")], [], 1))
    assert (result.reason, result.action) == (ResyncReason.CHECKSUM_MISMATCH,
                                              ResyncAction.RESUBSCRIBE)
    assert book.apply(kraken("update", [], [], 1)).outcome is D


def test_kraken_routes_by_symbol_and_ignores_other_channels() -> None:
    book = KrakenBook("BTC/USD")
    message = kraken("snapshot", [("1.0", "1")], [("2.0", "1")], None, symbol="ETH/USD")
    assert book.apply(message).outcome is I
    assert book.apply({"channel": "heartbeat"}).outcome is I
    assert book.apply({"method": "subscribe", "success": True}).outcome is I
    both = kraken("snapshot", [("1.0", "1")], [("2.0", "1")], None)
    both["data"].insert(0, {**both["data"][0], "symbol": "ETH/USD"})
    assert book.apply(both).outcome is A and book.counters.checksums_skipped == 1


@pytest.mark.parametrize("kwargs", [{"depth": 7}, {"price_precision": -1},
                                    {"qty_precision": 19}, {"qty_precision": 1.5}])
def test_kraken_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KrakenBook("BTC/USD", **kwargs)


# ---------------------------------------------------------------------- Bybit


def bybit(kind: str, u: int, bids: Any = (), asks: Any = (), depth: int = 50,
          seq: int = 1) -> dict[str, Any]:
    return {"topic": f"orderbook.{depth}.BTCUSDT", "type": kind, "ts": 1,
            "data": {"s": "BTCUSDT", "b": [list(b) for b in bids],
                     "a": [list(a) for a in asks], "u": u, "seq": seq}, "cts": 1}


def test_bybit_rules() -> None:
    book = BybitBook("BTCUSDT", depth=50)
    assert book.topic == "orderbook.50.BTCUSDT"
    assert book.apply(bybit("delta", 5)).outcome is D
    assert book.apply(bybit("snapshot", 10, [("1.0", "1")], [("2.0", "1")], seq=70)).outcome is A
    assert book.last_seq == 70
    rows = [
        (bybit("delta", 11, [("1.5", "1")], seq=71), A, None),
        (bybit("delta", 13), R, ResyncReason.SEQUENCE_GAP),
        (bybit("delta", 14), D, None),
        (bybit("snapshot", 1, [("1.0", "1")], [("2.0", "1")]), A, None),  # service restart
        (bybit("delta", 2), A, None),
        (bybit("delta", 2), R, ResyncReason.SEQUENCE_RESET),             # not above the last
        (bybit("snapshot", 30, [("1.0", "1")], [("2.0", "1")]), A, None),
        (bybit("snapshot", 30, [("1.0", "2")], [("2.0", "1")]), A, None),  # same u again
        (bybit("delta", 31, depth=200), I, None),                          # another depth
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason), message
        if outcome is R:
            assert result.action is ResyncAction.RESUBSCRIBE
    assert pairs(book.bids()) == [("1.0", "2")]


def test_bybit_lenient_sequence_still_refuses_regressions() -> None:
    book = BybitBook("BTCUSDT", depth=50, strict_sequence=False)
    book.apply(bybit("snapshot", 10))
    assert book.apply(bybit("delta", 15)).outcome is A
    assert book.apply(bybit("delta", 15)).reason is ResyncReason.SEQUENCE_RESET


def test_bybit_truncates_to_depth() -> None:
    book = BybitBook("BTCUSDT", depth=1)
    book.apply(bybit("snapshot", 1, [("1.0", "1"), ("0.9", "1")], [("2.0", "1")], depth=1))
    assert pairs(book.bids()) == [("1.0", "1")]
    book.apply(bybit("delta", 2, [("1.1", "1")], depth=1))
    assert pairs(book.bids()) == [("1.1", "1")]


def test_bybit_symbol_mismatch_is_malformed() -> None:
    book = BybitBook("BTCUSDT", depth=50)
    message = bybit("snapshot", 1)
    message["data"]["s"] = "ETHUSDT"
    assert book.apply(message).reason is ResyncReason.MALFORMED
    with pytest.raises(ValueError):
        BybitBook("BTCUSDT", depth=0)


# ---------------------------------------------------------------------- Coinbase


def cb(sequence: int, *events: dict[str, Any], channel: str = "l2_data") -> dict[str, Any]:
    return {"channel": channel, "client_id": "", "timestamp": "t", "sequence_num": sequence,
            "events": list(events)}


def cb_event(kind: str, *updates: tuple[str, str, str], product: str = "BTC-USD") -> dict[str, Any]:
    return {"type": kind, "product_id": product,
            "updates": [{"side": s, "event_time": "t", "price_level": p, "new_quantity": q}
                        for s, p, q in updates]}


def test_coinbase_rules() -> None:
    book = CoinbaseBook("BTC-USD")
    heartbeat = {"current_time": "t", "heartbeat_counter": 1}
    rows = [
        (cb(0, {"subscriptions": {"level2": ["BTC-USD"]}}, channel="subscriptions"), I, None),
        (cb(1, cb_event("update", ("bid", "1.0", "1"))), D, None),
        (cb(2, cb_event("snapshot", ("bid", "1.0", "1"), ("offer", "2.0", "1"))), A, None),
        (cb(3, cb_event("update", ("bid", "1.5", "2"), ("ask", "2.0", "0"))), A, None),
        (cb(4, heartbeat, channel="heartbeats"), I, None),
        (cb(5, cb_event("update", ("bid", "9.0", "1"), product="ETH-USD")), I, None),
        (cb(7, heartbeat, channel="heartbeats"), R, ResyncReason.SEQUENCE_GAP),
        (cb(8, cb_event("update", ("bid", "1.0", "1"))), D, None),
        (cb(9, cb_event("snapshot", ("bid", "1.0", "1"))), A, None),
        (cb(0, cb_event("update", ("bid", "1.0", "1"))), R, ResyncReason.SEQUENCE_RESET),
        # A new connection: the count restarts with a snapshot, a fresh start by itself.
        (cb(1, cb_event("snapshot", ("bid", "1.0", "7"))), A, None),
        (cb(2, cb_event("update", ("bid", "1.1", "1")), cb_event("update", ("bid", "1.1", "2"))),
         A, None),
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason), message
        if outcome is R:
            assert result.action is ResyncAction.RESUBSCRIBE
    assert pairs(book.bids()) == [("1.1", "2"), ("1.0", "7")]
    assert book.last_update_id == 2 and book.last_sequence == 2
    assert book.counters.applied == 3


def test_coinbase_new_connection_snapshot_after_reset() -> None:
    book = CoinbaseBook("BTC-USD")
    book.apply(cb(40, cb_event("snapshot", ("bid", "1.0", "1"))))
    book.reset()
    assert book.state is BookState.SYNCING and book.last_sequence is None
    assert book.apply(cb(0, cb_event("snapshot", ("bid", "1.0", "1")))).outcome is A
    assert book.counters.resyncs_total == 0


def test_coinbase_unchecked_sequence_and_malformed_side() -> None:
    book = CoinbaseBook("BTC-USD", check_sequence=False)
    book.apply(cb(1, cb_event("snapshot", ("bid", "1.0", "1"))))
    assert book.apply(cb(9, cb_event("update", ("bid", "1.0", "2")))).outcome is A
    result = book.apply(cb(10, cb_event("update", ("buy", "1.0", "2"))))
    assert result.reason is ResyncReason.MALFORMED


# ---------------------------------------------------------------------- Hyperliquid


def hl(time: int, bids: Any, asks: Any, coin: str = "BTC") -> dict[str, Any]:
    return {"channel": "l2Book", "data": {"coin": coin, "time": time, "levels": [
        [{"px": p, "sz": s, "n": n} for p, s, n in bids],
        [{"px": p, "sz": s, "n": n} for p, s, n in asks]]}}


def test_hyperliquid_rules() -> None:
    book = HyperliquidBook("BTC")
    assert book.pending_action is ResyncAction.AWAIT_SNAPSHOT
    rows = [
        (hl(100, [("69172.0", "1.21098", 5)], [("69173.0", "8.45682", 30)]), A, None),
        (hl(99, [("1.0", "1", 1)], []), S, None),
        (hl(100, [("69172.0", "2", 1)], []), A, None),
        (hl(101, [("5.0", "1", 1)], [("4.0", "1", 1)]), R, ResyncReason.CROSSED_BOOK),
        (hl(102, [("1.0", "1", 1)], [("2.0", "1", 1)], coin="ETH"), I, None),
        (hl(102, [("1.0", "1", 1)], [("2.0", "1", 1)]), A, None),
    ]
    for message, outcome, reason in rows:
        result = book.apply(message)
        assert (result.outcome, result.reason) == (outcome, reason), message
    level = book.best_bid()
    assert level is not None and level.orders == 1 and book.last_update_id == 102
    assert book.counters.resyncs[ResyncReason.CROSSED_BOOK] == 1
    assert book.apply({"channel": "l2Book", "data": {"coin": "BTC", "time": 103,
                                                     "levels": [[]]}}).reason is (
        ResyncReason.MALFORMED)
