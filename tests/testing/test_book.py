"""The simulator's book model and the OKX ``books`` pushes made from it, sans I/O.

:class:`SimulatedBook` is walked through thousands of moves against a mirror that only
applies the changes it reports; the OKX dialect's pushes are fed straight into an
``OkxBook`` (no socket, no loop): it must stay LIVE with every checksum verified and
end with the dialect's own book.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from defi_ws.books import BookState, OkxBook, Outcome, okx_checksum
from defi_ws.testing.book import SimulatedBook
from defi_ws.testing.dialects import OkxDialect
from defi_ws.testing.dialects.base import Event

TOPIC = "books:BTC-USDT"


def walk(rng: random.Random, price: float) -> float:
    return max(0.01, price * (1.0 + rng.gauss(0.0, 0.0005)))  # as the simulator's


def events(count: int, seed: int = 7, price: float = 512.34) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for number in range(1, count + 1):
        price = walk(rng, price)
        out.append(Event(number, price, f"{price:.2f}", f"{rng.uniform(0.001, 2.0):.4f}",
                         1_700_000_000_000 + number, rng.random() < 0.5, False))
    return out


@pytest.mark.parametrize("start", [512.34, 3.21, 0.05])
def test_moves_report_every_change_and_never_cross(start: float) -> None:
    rng = random.Random(1)
    book = SimulatedBook(start, random.Random(2), levels=30)
    mirror = {"bids": dict(book.bids()), "asks": dict(book.asks())}
    price, removed_in_top = start, 0
    for _ in range(3000):
        price = walk(rng, price)
        bids, asks = book.move(price, ask=rng.random() < 0.5, size="0.5000")
        for side, changes in (("bids", bids), ("asks", asks)):
            assert [t for t, _ in changes] == sorted({t for t, _ in changes},
                                                     reverse=side == "bids")
            top = sorted(mirror[side], reverse=side == "bids")[:25]
            for tick, size in changes:
                if size == "0":
                    assert mirror[side].pop(tick) != "0"  # only levels the client has
                    removed_in_top += tick in top
                else:
                    assert mirror[side].get(tick) != size  # only real changes
                    mirror[side][tick] = size
        assert mirror["bids"] == dict(book.bids()) and mirror["asks"] == dict(book.asks())
        mid = max(1, round(price * 100))
        best_ask = book.asks(1)[0][0]
        assert best_ask > mid and best_ask <= mid + book.near_levels * book.step
        assert len(book.asks()) == 30
        if book.bids():
            assert mid > book.bids(1)[0][0] >= mid - book.near_levels * book.step
            # fewer bids only when the farthest is at the lowest price, one tick
            assert len(book.bids()) == 30 or book.bids()[-1][0] == 1
    assert removed_in_top > 100  # levels leave the checksummed top, not only the tail
    assert SimulatedBook.price_text(123405) == "1234.05"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mid"):
        SimulatedBook(0.0, random.Random())
    with pytest.raises(ValueError, match="near_levels"):
        SimulatedBook(100.0, random.Random(), levels=3, near_levels=4)


def snapshot(dialect: OkxDialect, seq: int) -> dict[str, Any]:
    bids, asks = dialect.book_levels(TOPIC, None)
    return {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "snapshot",
            "data": [{"bids": [[p, s, "0", "1"] for p, s in bids],
                      "asks": [[p, s, "0", "1"] for p, s in asks],
                      "checksum": okx_checksum(bids, asks), "prevSeqId": -1,
                      "seqId": seq, "ts": "0"}]}


def test_an_okx_book_fed_the_dialects_pushes_verifies_every_checksum() -> None:
    dialect = OkxDialect(channels=["books"])
    stream = events(3000)
    first = orjson.loads(dialect.payload(TOPIC, 1, stream[0]))  # makes the book
    book = OkxBook("BTC-USDT")  # reject_crossed on
    assert book.apply(snapshot(dialect, 1)).outcome is Outcome.APPLIED
    assert first["data"][0]["checksum"] == okx_checksum(*dialect.book_levels(TOPIC))
    removals = 0
    for event in stream[1:]:
        push = orjson.loads(dialect.payload(TOPIC, event.number, event))
        update = push["data"][0]
        assert update["checksum"] != 0
        removals += sum(level[1] == "0" for level in update["bids"] + update["asks"])
        assert book.apply(push).outcome is Outcome.APPLIED
        assert book.best_bid() < book.best_ask()  # type: ignore[operator]
    counters = book.counters
    assert book.state is BookState.LIVE and counters.resyncs_total == 0
    assert counters.checksums_verified == 3000 and counters.checksums_skipped == 0
    assert removals > 1000
    bids, asks = dialect.book_levels(TOPIC)
    assert [(lv.raw_price, lv.raw_size) for lv in book.bids(25)] == bids
    assert [(lv.raw_price, lv.raw_size) for lv in book.asks(25)] == asks
    # An event serialised again (another connection's numbers) is the same change.
    again = orjson.loads(dialect.payload(TOPIC, 9, stream[-1]))["data"][0]
    assert (again["bids"], again["asks"]) == (update["bids"], update["asks"])


def test_without_checksums_every_book_message_says_0() -> None:
    dialect = OkxDialect(channels=["books"], checksums=False)
    for event in events(50):
        assert orjson.loads(dialect.payload(TOPIC, event.number, event))["data"][0][
            "checksum"] == 0


@pytest.mark.parametrize("channel", ["bbo-tbt", "books5"])
def test_the_top_of_book_channels_show_the_best_levels_uncrossed(channel: str) -> None:
    dialect = OkxDialect(channels=[channel])
    book = OkxBook("BTC-USDT", channel=channel)  # each push replaces it; crossed: a break
    topic = f"{channel}:BTC-USDT"
    for event in events(2000):
        assert book.apply(orjson.loads(dialect.payload(topic, event.number, event))
                          ).outcome is Outcome.APPLIED
    assert book.counters.resyncs_total == 0
    depth = 1 if channel == "bbo-tbt" else 5
    assert ([(lv.raw_price, lv.raw_size) for lv in book.bids()],
            [(lv.raw_price, lv.raw_size) for lv in book.asks()]) == dialect.book_levels(
                topic, depth)
