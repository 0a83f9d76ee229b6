"""Checksums against the venues' documented examples (tests/fixtures/books/*.json)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from defi_ws.books import (
    BookUsageError,
    KrakenBook,
    OkxBook,
    Outcome,
    ResyncAction,
    ResyncReason,
    kraken_checksum,
    kraken_checksum_string,
    okx_checksum,
    okx_checksum_string,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "books"


def load(name: str, **kwargs: Any) -> Any:
    return json.loads((FIXTURES / name).read_text(), **kwargs)


OKX_CASES = load("okx_checksum.json")["cases"]


@pytest.mark.parametrize("case", OKX_CASES, ids=[c["name"] for c in OKX_CASES])
def test_okx_checksum_matches_the_documented_examples(case: dict[str, Any]) -> None:
    bids = [(lv[0], lv[1]) for lv in case["bids"]]
    asks = [(lv[0], lv[1]) for lv in case["asks"]]
    assert okx_checksum_string(bids, asks) == case["string"]
    assert okx_checksum(bids, asks) == case["checksum"]


@pytest.mark.parametrize("case", OKX_CASES, ids=[c["name"] for c in OKX_CASES])
def test_okx_book_verifies_the_documented_checksum(case: dict[str, Any]) -> None:
    # The documented book as a streamed snapshot (a constructed message).
    levels = {side: [lv if len(lv) == 4 else [*lv, "0", "1"] for lv in case[side]]
              for side in ("bids", "asks")}
    message = {"arg": {"channel": "books", "instId": "ACOIN-USDT"}, "action": "snapshot",
               "data": [{**levels, "ts": "1", "checksum": case["checksum"],
                         "prevSeqId": -1, "seqId": 1}]}
    book = OkxBook("ACOIN-USDT")
    assert book.apply(message).outcome is Outcome.APPLIED
    assert book.is_live and book.counters.checksums_verified == 1
    wrong = {**message, "data": [{**message["data"][0], "checksum": case["checksum"] ^ 1}]}
    result = book.apply(wrong)
    assert (result.reason, result.action) == (ResyncReason.CHECKSUM_MISMATCH,
                                              ResyncAction.RESUBSCRIBE)
    assert str(case["checksum"]) in result.detail
    assert not book.is_live and book.bids() == []


def test_okx_checksum_covers_only_the_top_25_levels() -> None:
    bids = [(str(1000 - i), "1") for i in range(30)]
    asks = [(str(1001 + i), "1") for i in range(30)]
    assert okx_checksum(bids, asks) == okx_checksum(bids[:25], asks[:25])
    assert okx_checksum(bids, asks) != okx_checksum(bids[:24], asks[:25])
    assert okx_checksum_string([], []) == ""


def test_okx_checksum_is_signed_32_bit() -> None:
    values = {okx_checksum([(str(p), "1")], [(str(p + 1), "2")]) for p in range(1, 200)}
    assert all(-(2**31) <= v < 2**31 for v in values)
    assert any(v < 0 for v in values) and any(v > 0 for v in values)


KRAKEN = load("kraken_checksum.json", parse_float=Decimal)


def _kraken_pairs(levels: list[dict[str, Decimal]]) -> list[tuple[str, str]]:
    return [(format(lv["price"], "f"), format(lv["qty"], "f")) for lv in levels]


def test_kraken_checksum_matches_the_documented_example() -> None:
    entry = KRAKEN["message"]["data"][0]
    asks, bids = _kraken_pairs(entry["asks"]), _kraken_pairs(entry["bids"])
    assert kraken_checksum_string(asks=asks, bids=[]) == KRAKEN["asks_string"]
    assert kraken_checksum_string(asks=[], bids=bids) == KRAKEN["bids_string"]
    assert kraken_checksum(asks=asks, bids=bids) == KRAKEN["checksum"] == 3310070434


def test_kraken_book_verifies_the_documented_snapshot_decoded_exactly() -> None:
    book = KrakenBook("BTC/USD")
    assert book.apply(KRAKEN["message"]).outcome is Outcome.APPLIED
    assert book.is_live and book.counters.checksums_verified == 1
    best = book.best_ask()
    assert best is not None and best.raw_size == "0.00100000"


def test_kraken_book_with_precisions_takes_float_decoded_messages() -> None:
    message = orjson.loads((FIXTURES / "kraken_checksum.json").read_bytes())["message"]
    assert type(message["data"][0]["bids"][0]["qty"]) is float  # 0.10000000 -> 0.1
    book = KrakenBook("BTC/USD", price_precision=KRAKEN["price_precision"],
                      qty_precision=KRAKEN["qty_precision"])
    assert book.apply(message).outcome is Outcome.APPLIED
    best = book.best_bid()
    assert best is not None and (best.raw_price, best.raw_size) == ("45283.5", "0.10000000")
    assert best.size == Decimal("0.1")


def test_kraken_book_refuses_floats_without_precisions() -> None:
    message = orjson.loads((FIXTURES / "kraken_checksum.json").read_bytes())["message"]
    book = KrakenBook("BTC/USD")
    with pytest.raises(BookUsageError, match="parse_float=Decimal"):
        book.apply(message)
    assert book.counters.resyncs_total == 0


def test_kraken_book_detects_a_wrong_checksum() -> None:
    entry = KRAKEN["message"]["data"][0]
    message = {**KRAKEN["message"], "data": [{**entry, "checksum": KRAKEN["checksum"] + 1}]}
    book = KrakenBook("BTC/USD")
    result = book.apply(message)
    assert (result.reason, result.action) == (ResyncReason.CHECKSUM_MISMATCH,
                                              ResyncAction.RESUBSCRIBE)
    assert book.bids() == [] and not book.is_live


def test_kraken_digits_of_scientific_notation() -> None:
    # A Decimal's str() of a tiny qty is scientific; the checksum needs fixed point.
    tiny = str(Decimal("0.00000001"))
    assert tiny == "1E-8"
    assert kraken_checksum_string(asks=[("0.05005", tiny)], bids=[]) == "50051"
    assert kraken_checksum_string(asks=[("0.05005", "0.00000001")], bids=[]) == "50051"


def test_kraken_checksum_covers_only_the_top_10_levels() -> None:
    asks = [(f"{100 + i}.0", "1.00000000") for i in range(12)]
    bids = [(f"{99 - i}.0", "1.00000000") for i in range(12)]
    assert kraken_checksum(asks=asks, bids=bids) == kraken_checksum(asks=asks[:10],
                                                                     bids=bids[:10])
