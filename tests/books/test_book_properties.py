"""Property tests: books against a reference venue (a plain dict per side).

For every venue, hypothesis draws the venue's book changes (and, where asked, faults
on the way: a lost message, two swapped, one delivered twice, a corrupted checksum or
content, a foreign message in between). :class:`~model.Runner` checks after *every*
input that a LIVE book equals exactly the venue state its last applied message stands
for, and that a book that is not LIVE is empty and says what it waits for: the book is
never silently wrong. After the faults, clean traffic (and the snapshots the book asks
for) must bring it back LIVE and equal to the venue's book.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_ws.books import (
    BinanceBook,
    BinanceMarket,
    BybitBook,
    CoinbaseBook,
    HyperliquidBook,
    KrakenBook,
    OkxBook,
    OrderBook,
    Outcome,
    ResyncReason,
    SnapshotSource,
)
from tests.books.model import (
    FAULTS,
    SIZES,
    BinanceSim,
    BybitSim,
    CoinbaseSim,
    Delivery,
    HyperliquidSim,
    KrakenSim,
    OkxSim,
    Op,
    Plan,
    Runner,
    VenueSim,
    ops_strategy,
    plans,
)

SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
# The targeted properties below reach their fault from a short live run.
TARGETED = settings(SETTINGS, max_examples=100)

Maker = Callable[[Sequence[Op]], tuple[OrderBook, VenueSim]]

VENUES: dict[str, Maker] = {
    "binance-spot": lambda init: (BinanceBook("btcusdt"), BinanceSim(init)),
    "binance-usdm": lambda init: (BinanceBook("BTCUSDT", market=BinanceMarket.USDM),
                                  BinanceSim(init, usdm=True)),
    "binance-small-buffer": lambda init: (BinanceBook("BTCUSDT", max_buffered=2),
                                          BinanceSim(init)),
    "binance-spot-overlaps": lambda init: (BinanceBook("BTCUSDT"),
                                           BinanceSim(init, overlaps=True)),
    "okx-depth-5": lambda init: (OkxBook("BTC-USDT", depth=5), OkxSim(init, depth=5)),
    "okx-400": lambda init: (OkxBook("BTC-USDT"), OkxSim(init)),
    "okx-rest": lambda init: (OkxBook("BTC-USDT", depth=5,
                                      snapshot_source=SnapshotSource.REST),
                              OkxSim(init, depth=5, rest=True)),
    "okx-zero-checksum": lambda init: (OkxBook("BTC-USDT", depth=5),
                                       OkxSim(init, depth=5, zero_checksum=True)),
    "kraken-10": lambda init: (KrakenBook("BTC/USD", depth=10), KrakenSim(init, depth=10)),
    "bybit-5": lambda init: (BybitBook("BTCUSDT", depth=5), BybitSim(init, depth=5)),
    "bybit-50": lambda init: (BybitBook("BTCUSDT", depth=50), BybitSim(init, depth=50)),
    "coinbase": lambda init: (CoinbaseBook("BTC-USD"), CoinbaseSim(init)),
    "hyperliquid": lambda init: (HyperliquidBook("BTC"), HyperliquidSim(init)),
}

# Venues whose every message carries a sequence: a lost or swapped message is a break.
SEQUENCED = ["binance-spot", "binance-usdm", "okx-depth-5", "okx-rest", "okx-zero-checksum",
             "bybit-5", "coinbase"]
# Venues whose messages carry a checksum of the whole (scoped) book.
CHECKSUMMED = ["okx-depth-5", "okx-rest", "kraken-10"]


def _venue_runs(plan: Plan, venues: Sequence[str]) -> Iterator[tuple[str, Runner]]:
    """One run of ``plan`` per venue: each example is checked against every venue, so
    hypothesis' generation (the main cost) is paid once per example."""
    for venue in venues:
        book, sim = VENUES[venue](plan.initial)
        yield venue, Runner(book, sim)


@SETTINGS
@given(plan=plans(faults=("extra",)))
def test_clean_stream_matches_reference_model(plan: Plan) -> None:
    extras = sum(1 for fault in plan.faults.values() if fault == "extra")
    for venue, runner in _venue_runs(plan, sorted(VENUES)):
        book = runner.book
        run = runner.play(plan)
        assert run.resyncs == 0, (venue, book.last_resync)
        runner.recover()
        assert book.counters.resyncs_total == 0, venue
        assert book.counters.ignored == extras, venue


@SETTINGS
@given(plan=plans(faults=FAULTS))
def test_faults_never_leave_a_wrong_live_book(plan: Plan) -> None:
    for venue, runner in _venue_runs(plan, sorted(VENUES)):
        try:
            runner.play(plan)  # checks the book after every input
            runner.recover()
        except AssertionError as exc:
            raise AssertionError(f"{venue}: {exc}") from exc


nonempty_ops = ops_strategy.filter(bool)


@TARGETED
@given(plan=plans(max_steps=6), first=nonempty_ops, second=nonempty_ops,
       draws=st.tuples(st.integers(0, 11), st.integers(0, 11)), swap=st.booleans())
def test_a_lost_or_swapped_message_always_resyncs(
        plan: Plan, first: list[Op], second: list[Op], draws: tuple[int, int],
        swap: bool) -> None:
    for venue, runner in _venue_runs(plan, SEQUENCED):
        runner.play(plan)
        runner.recover()
        sim = runner.sim
        one, two = sim.step(first, draws[0]), sim.step(second, draws[1])
        results = [runner.deliver(d) for d in ([two, one] if swap else [two])]
        assert results[0].outcome is Outcome.RESYNC_NEEDED, venue
        assert results[0].reason in (ResyncReason.SEQUENCE_GAP,
                                     ResyncReason.SEQUENCE_RESET), venue
        assert runner.book.counters.resyncs_total == 1, venue
        runner.recover()


def _wrong_size(delivery: Delivery, pick: int) -> Delivery | None:
    """The same message with one level's size changed (right sequence, wrong content)."""
    entry = delivery.message["data"][0]
    changed = [(side, i) for side in ("bids", "asks") for i, lv in enumerate(entry[side])
               if (Decimal(lv["qty"]) if isinstance(lv, dict) else Decimal(lv[1])) != 0]
    if not changed:
        return None
    side, i = changed[pick % len(changed)]
    levels = [list(lv) if isinstance(lv, list) else dict(lv) for lv in entry[side]]
    level = levels[i]
    if isinstance(level, dict):
        level["qty"] = level["qty"] + Decimal("0.00000001")
    else:
        level[1] = next(size for size in SIZES if size != level[1])
    return Delivery({**delivery.message, "data": [{**entry, side: levels}]}, delivery.truth)


@TARGETED
@given(plan=plans(max_steps=6), ops=nonempty_ops, draw=st.integers(0, 11),
       pick=st.integers(0, 20), content=st.booleans())
def test_a_corrupted_checksum_or_level_always_resyncs(
        plan: Plan, ops: list[Op], draw: int, pick: int, content: bool) -> None:
    # Non-empty ops: an OKX update without changes keeps its seqId (a keep-alive),
    # which a REST-synced book rightly drops as not newer than its snapshot.
    for venue, runner in _venue_runs(plan, CHECKSUMMED):
        runner.play(plan)
        runner.recover()
        delivery = runner.sim.step(ops, draw)
        bad = (_wrong_size(delivery, pick) if content else None) or runner.sim.corrupt(delivery)
        assert bad is not None
        result = runner.deliver(bad)
        assert result.outcome is Outcome.RESYNC_NEEDED, venue
        assert result.reason is ResyncReason.CHECKSUM_MISMATCH, venue
        runner.recover()


@TARGETED
@given(plan=plans(max_steps=6), first=ops_strategy, second=ops_strategy)
def test_hyperliquid_keeps_the_newest_snapshot(plan: Plan, first: list[Op],
                                               second: list[Op]) -> None:
    [(_, runner)] = _venue_runs(plan, ["hyperliquid"])
    runner.play(plan)
    runner.recover()
    sim = runner.sim
    older, newer = sim.step(first, 0), sim.step(second, 0)
    assert runner.deliver(newer).outcome is Outcome.APPLIED
    assert runner.deliver(older).outcome is Outcome.STALE_DROPPED
    assert runner.deliver(newer).outcome is Outcome.APPLIED  # the same block again
    crossed = sim.corrupt(sim.step([(True, 0, 1)], 0))
    assert crossed is not None
    result = runner.deliver(crossed)
    assert result.reason is ResyncReason.CROSSED_BOOK
    runner.recover()
