"""A reference venue for the book tests: a plain dict per side, and one encoder per venue.

The "truth" is the venue's own book (price tick -> size text). Each venue simulator
turns a change of the truth into that venue's message (with its sequence ids and
checksum), and remembers the truth each message stands for, so a test can compare the
book under test with the exact venue state it claims to mirror.

Bids live on ticks 1..30 (prices 0.1..3.0) and asks on ticks 31..60 (3.1..6.0): the
truth is never crossed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from defi_ws.books import (
    ApplyResult,
    OrderBook,
    Outcome,
    ResyncAction,
    kraken_checksum,
    okx_checksum,
)

SIZES = ("0.5", "1", "2.25", "10", "0.00000001", "3.10")
TICKS_PER_SIDE = 30

# (is_bid, tick offset 0..29, size index; -1 deletes)
Op = tuple[bool, int, int]
Pair = tuple[str, str]
View = tuple[tuple[Pair, ...], tuple[Pair, ...]]



def _op(code: int) -> Op:
    # One integer per op keeps hypothesis' draws (its main cost here) few; it shrinks
    # towards a removal of the best bid.
    code, size_index = divmod(code, len(SIZES) + 1)
    is_ask, offset = divmod(code, TICKS_PER_SIDE)
    return (not is_ask, TICKS_PER_SIDE - 1 - offset, size_index - 1)


_OP_CODES = 2 * TICKS_PER_SIDE * (len(SIZES) + 1)
ops_strategy = st.lists(st.integers(0, _OP_CODES - 1).map(_op), max_size=4)
initial_strategy = st.lists(
    st.integers(0, _OP_CODES - 1).map(_op).filter(lambda op: op[2] >= 0), max_size=30)


def price_text(tick: int) -> str:
    return f"{tick // 10}.{tick % 10}"


class Truth:
    """The venue's book: tick -> size text, per side."""

    def __init__(self) -> None:
        self.bids: dict[int, str] = {}
        self.asks: dict[int, str] = {}

    def apply(self, ops: Sequence[Op]) -> tuple[list[Pair], list[Pair]]:
        """Apply ``ops``; return the changes as (price, size) texts, "0" for removals."""
        bids: list[Pair] = []
        asks: list[Pair] = []
        for is_bid, offset, size_index in ops:
            tick = 1 + offset if is_bid else 1 + TICKS_PER_SIDE + offset
            side, out = (self.bids, bids) if is_bid else (self.asks, asks)
            if size_index < 0:
                side.pop(tick, None)
                out.append((price_text(tick), "0"))
            else:
                side[tick] = SIZES[size_index]
                out.append((price_text(tick), SIZES[size_index]))
        return bids, asks

    def view(self, depth: int | None = None) -> View:
        """The best ``depth`` levels per side (all when None), best first."""
        bids = tuple((price_text(t), self.bids[t]) for t in sorted(self.bids, reverse=True))
        asks = tuple((price_text(t), self.asks[t]) for t in sorted(self.asks))
        if depth is not None:
            bids, asks = bids[:depth], asks[:depth]
        return bids, asks


def book_view(book: OrderBook) -> View:
    return (tuple((lv.raw_price, lv.raw_size) for lv in book.bids()),
            tuple((lv.raw_price, lv.raw_size) for lv in book.asks()))


def scoped_changes(old: View, new: View, truth: Truth) -> tuple[list[Pair], list[Pair]]:
    """What a depth-scoped venue sends: new or changed levels of the new view, and
    removals of levels deleted from the book (not of levels pushed out of scope)."""
    out: list[list[Pair]] = []
    for old_side, new_side, full in ((old[0], new[0], truth.bids), (old[1], new[1], truth.asks)):
        old_map, new_map = dict(old_side), dict(new_side)
        changes = [(p, s) for p, s in new_side if old_map.get(p) != s]
        remaining = {price_text(t) for t in full}
        changes += [(p, "0") for p in old_map if p not in new_map and p not in remaining]
        out.append(changes)
    return out[0], out[1]


@dataclass
class Delivery:
    """A message on its way to the book, with the truth it stands for."""

    message: dict[str, Any]
    truth: View


class VenueSim:
    """Base: a venue that streams one book."""

    streams_snapshots = True  # the venue streams a snapshot after (re)subscribe
    rest_snapshots = False  # the book syncs from REST snapshots
    depth: int | None = None

    def __init__(self, initial: Sequence[Op]) -> None:
        self.truth = Truth()
        self.truth.apply(initial)
        self.by_id: dict[int, View] = {}

    def view(self) -> View:
        return self.truth.view(self.depth)

    def snapshot(self) -> Delivery:  # a streamed snapshot of the current truth
        raise NotImplementedError

    def rest_snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        raise NotImplementedError

    def extra(self, draw: int) -> Delivery | None:
        """A message of the same connection that is not this book's (or None)."""
        return None

    def corrupt(self, delivery: Delivery) -> Delivery | None:
        """A copy whose content or checksum is wrong, or None if not detectable."""
        return None


class BinanceSim(VenueSim):
    streams_snapshots = False
    rest_snapshots = True

    def __init__(self, initial: Sequence[Op], usdm: bool = False, start: int = 100,
                 overlaps: bool = False) -> None:
        super().__init__(initial)
        self.usdm = usdm
        self.overlaps = overlaps
        self.last_u = start - 1
        self.by_id[self.last_u] = self.view()
        self.previous: tuple[int, list[Pair], list[Pair]] | None = None

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        bids, asks = self.truth.apply(ops)
        first = self.last_u + 1 + (draw % 3 if self.usdm else 0)  # USD-M ids jump
        last = first + draw % 4
        if self.overlaps and self.previous is not None and draw % 3 == 2:
            # Spot: an update re-covering the previous one's ids carries its changes too
            # (sizes are absolute: the final size of every level changed in [U, u]).
            first = self.previous[0]
            bids, asks = self.previous[1] + bids, self.previous[2] + asks
        self.previous = (first, bids, asks)
        message: dict[str, Any] = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": first,
                                   "u": last, "b": [list(b) for b in bids],
                                   "a": [list(a) for a in asks]}
        if self.usdm:
            message["pu"] = self.last_u
        self.last_u = last
        self.by_id[last] = self.view()
        return Delivery(message, self.by_id[last])

    def rest_snapshot(self) -> dict[str, Any]:
        bids, asks = self.view()
        return {"lastUpdateId": self.last_u, "bids": [list(b) for b in bids],
                "asks": [list(a) for a in asks]}

    def extra(self, draw: int) -> Delivery | None:
        other = {"e": "depthUpdate", "E": 1, "s": "ETHUSDT", "U": 1, "u": 2, "b": [], "a": []}
        return Delivery({"stream": "ethusdt@depth", "data": other}, self.view())


class OkxSim(VenueSim):
    def __init__(self, initial: Sequence[Op], depth: int = 400, rest: bool = False,
                 zero_checksum: bool = False) -> None:
        super().__init__(initial)
        self.depth = depth
        self.rest_snapshots = rest
        self.streams_snapshots = not rest
        self.zero_checksum = zero_checksum
        self.seq = 1000
        self.by_id[self.seq] = self.view()

    def _checksum(self, view: View) -> int:
        return 0 if self.zero_checksum else okx_checksum(view[0], view[1])

    def _levels(self, pairs: Sequence[Pair]) -> list[list[str]]:
        return [[p, s, "0", "1"] for p, s in pairs]

    def snapshot(self) -> Delivery:
        view = self.view()
        data = {"asks": self._levels(view[1]), "bids": self._levels(view[0]), "ts": "1",
                "checksum": self._checksum(view), "prevSeqId": -1, "seqId": self.seq}
        message = {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "snapshot",
                   "data": [data]}
        return Delivery(message, view)

    def rest_snapshot(self) -> dict[str, Any]:
        view = self.view()
        return {"code": "0", "msg": "", "data": [{
            "asks": self._levels(view[1]), "bids": self._levels(view[0]), "ts": "1",
            "seqId": self.seq}]}

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        old = self.view()
        self.truth.apply(ops)
        new = self.view()
        bids, asks = scoped_changes(old, new, self.truth)
        prev, self.seq = self.seq, self.seq + (1 + draw % 3 if ops else 0)
        data = {"asks": self._levels(asks), "bids": self._levels(bids), "ts": "1",
                "checksum": self._checksum(new), "prevSeqId": prev, "seqId": self.seq}
        self.by_id[self.seq] = new
        message = {"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": "update",
                   "data": [data]}
        return Delivery(message, new)

    def extra(self, draw: int) -> Delivery | None:
        return Delivery({"event": "subscribe", "arg": {"channel": "books",
                                                       "instId": "BTC-USDT"}}, self.view())

    def corrupt(self, delivery: Delivery) -> Delivery | None:
        if self.zero_checksum:
            return None
        data = dict(delivery.message["data"][0])
        data["checksum"] = data["checksum"] + 1 if data["checksum"] != -1 else 1
        return Delivery({**delivery.message, "data": [data]}, delivery.truth)


class KrakenSim(VenueSim):
    """Kraken writes every qty with the instrument's full precision (8 decimals here):
    its checksum strips '.' and leading zeros, so "1" and "0.00000001" would collide."""

    def __init__(self, initial: Sequence[Op], depth: int = 10) -> None:
        super().__init__(initial)
        self.depth = depth

    def view(self) -> View:
        bids, asks = self.truth.view(self.depth)
        return (tuple((p, _qty8(s)) for p, s in bids), tuple((p, _qty8(s)) for p, s in asks))

    def _levels(self, pairs: Sequence[Pair]) -> list[dict[str, Decimal]]:
        # As decoded with parse_float=Decimal: exact, trailing zeros kept.
        return [{"price": Decimal(p), "qty": Decimal(s)} for p, s in pairs]

    def _message(self, kind: str, bids: Sequence[Pair], asks: Sequence[Pair],
                 view: View) -> Delivery:
        checksum = kraken_checksum(asks=view[1], bids=view[0])
        data = {"symbol": "BTC/USD", "bids": self._levels(bids), "asks": self._levels(asks),
                "checksum": checksum, "timestamp": "2023-10-06T17:35:55.440295Z"}
        return Delivery({"channel": "book", "type": kind, "data": [data]}, view)

    def snapshot(self) -> Delivery:
        view = self.view()
        return self._message("snapshot", view[0], view[1], view)

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        old = self.view()
        self.truth.apply(ops)
        new = self.view()
        bids, asks = scoped_changes(old, new, self.truth)
        return self._message("update", bids, asks, new)

    def extra(self, draw: int) -> Delivery | None:
        return Delivery({"channel": "heartbeat"}, self.view())

    def corrupt(self, delivery: Delivery) -> Delivery | None:
        data = dict(delivery.message["data"][0])
        data["checksum"] = (data["checksum"] + 1) % 2**32
        return Delivery({**delivery.message, "data": [data]}, delivery.truth)


def _qty8(size: str) -> str:
    return format(Decimal(size), ".8f")


class BybitSim(VenueSim):
    def __init__(self, initial: Sequence[Op], depth: int = 50) -> None:
        super().__init__(initial)
        self.depth = depth
        self.u = 5000
        self.seq = 9_000_000

    def _message(self, kind: str, bids: Sequence[Pair], asks: Sequence[Pair]) -> dict[str, Any]:
        self.seq += 7
        return {"topic": f"orderbook.{self.depth}.BTCUSDT", "type": kind, "ts": 1,
                "data": {"s": "BTCUSDT", "b": [list(b) for b in bids],
                         "a": [list(a) for a in asks], "u": self.u, "seq": self.seq},
                "cts": 1}

    def snapshot(self) -> Delivery:
        view = self.view()
        return Delivery(self._message("snapshot", view[0], view[1]), view)

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        old = self.view()
        self.truth.apply(ops)
        new = self.view()
        bids, asks = scoped_changes(old, new, self.truth)
        self.u += 1
        return Delivery(self._message("delta", bids, asks), new)

    def extra(self, draw: int) -> Delivery | None:
        return Delivery({"success": True, "ret_msg": "pong", "op": "ping"}, self.view())


class CoinbaseSim(VenueSim):
    def __init__(self, initial: Sequence[Op]) -> None:
        super().__init__(initial)
        self.sequence = itertools.count(0)

    def _envelope(self, channel: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        return {"channel": channel, "client_id": "", "timestamp": "2023-02-09T20:32:50Z",
                "sequence_num": next(self.sequence), "events": events}

    @staticmethod
    def _updates(bids: Sequence[Pair], asks: Sequence[Pair]) -> list[dict[str, str]]:
        return ([{"side": "bid", "event_time": "t", "price_level": p, "new_quantity": s}
                 for p, s in bids]
                + [{"side": "offer", "event_time": "t", "price_level": p, "new_quantity": s}
                   for p, s in asks])

    def snapshot(self) -> Delivery:
        view = self.view()
        event = {"type": "snapshot", "product_id": "BTC-USD",
                 "updates": self._updates(view[0], view[1])}
        return Delivery(self._envelope("l2_data", [event]), view)

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        bids, asks = self.truth.apply(ops)
        event = {"type": "update", "product_id": "BTC-USD", "updates": self._updates(bids, asks)}
        return Delivery(self._envelope("l2_data", [event]), self.view())

    def extra(self, draw: int) -> Delivery | None:
        if draw % 2:
            return Delivery(self._envelope("heartbeats", [{"current_time": "t",
                                                           "heartbeat_counter": draw}]),
                            self.view())
        other = {"type": "update", "product_id": "ETH-USD",
                 "updates": [{"side": "bid", "event_time": "t", "price_level": "1",
                              "new_quantity": "1"}]}
        return Delivery(self._envelope("l2_data", [other]), self.view())


class HyperliquidSim(VenueSim):
    def __init__(self, initial: Sequence[Op]) -> None:
        super().__init__(initial)
        self.time = 1_787_195_067_883

    def snapshot(self) -> Delivery:
        view = self.view()
        levels = [[{"px": p, "sz": s, "n": 1} for p, s in side] for side in view]
        message = {"channel": "l2Book", "data": {"coin": "BTC", "time": self.time,
                                                 "levels": levels}}
        return Delivery(message, view)

    def step(self, ops: Sequence[Op], draw: int) -> Delivery:
        self.truth.apply(ops)
        self.time += 500 + draw
        return self.snapshot()

    def extra(self, draw: int) -> Delivery | None:
        return Delivery({"channel": "pong"}, self.view())

    def corrupt(self, delivery: Delivery) -> Delivery | None:
        # A crossed book: an ask below the best bid (none without a bid: undetectable).
        levels = delivery.message["data"]["levels"]
        if not levels[0]:
            return None
        bad = [levels[0], [{"px": "0.05", "sz": "1", "n": 1}, *levels[1]]]
        data = {**delivery.message["data"], "levels": bad}
        return Delivery({**delivery.message, "data": data}, delivery.truth)


# ---------------------------------------------------------------------- the runner

FAULTS = ("drop", "swap", "dup", "corrupt", "extra")


@dataclass
class Plan:
    """A run: the venue's changes, faults by step, and how late snapshots arrive."""

    initial: list[Op]
    steps: list[tuple[list[Op], int]]
    faults: dict[int, str] = field(default_factory=dict)
    sync_delay: int = 1


@st.composite
def plans(draw: st.DrawFn, faults: Sequence[str] = (), max_steps: int = 15) -> Plan:
    initial = draw(initial_strategy)
    steps = draw(st.lists(st.tuples(ops_strategy, st.integers(0, 11)), min_size=1,
                          max_size=max_steps))
    chosen: dict[int, str] = {}
    if faults:
        chosen = draw(st.dictionaries(st.integers(0, len(steps) - 1), st.sampled_from(faults),
                                      max_size=3))
    return Plan(initial, steps, chosen, draw(st.integers(0, 3)))


@dataclass
class Run:
    """What happened: every result, and the book's state checked after each."""

    results: list[ApplyResult] = field(default_factory=list)
    resyncs: int = 0


class Runner:
    """Drives a book from a venue sim through a plan, checking after every input that a
    LIVE book equals exactly the venue state its last applied message stands for."""

    def __init__(self, book: OrderBook, sim: VenueSim) -> None:
        self.book = book
        self.sim = sim
        self.expected: View | None = None
        self.sync_in: int | None = None
        self.run = Run()

    def check(self) -> None:
        book = self.book
        if book.is_live:
            assert self.expected is not None
            assert book_view(book) == self.expected, (book_view(book), self.expected)
            bids, asks = book.bids(), book.asks()
            assert not (bids and asks and bids[0].price >= asks[0].price)
        else:
            assert book.bids() == [] and book.asks() == []
            assert book.pending_action is not None

    def _after(self, result: ApplyResult, truth: View | None) -> None:
        self.run.results.append(result)
        if result.outcome is Outcome.APPLIED:
            self.expected = truth
        elif result.outcome is Outcome.RESYNC_NEEDED:
            self.run.resyncs += 1
            assert result.reason is not None and result.action is not None
            assert not self.book.is_live
        if result.action in (ResyncAction.FETCH_SNAPSHOT, ResyncAction.RESUBSCRIBE):
            if self.sync_in is None:
                self.sync_in = self.plan_delay
        self.check()

    def deliver(self, delivery: Delivery) -> ApplyResult:
        result = self.book.apply(delivery.message)
        self._after(result, delivery.truth)
        return result

    def sync(self) -> None:
        """The snapshot the book asked for arrives (taken from the venue now)."""
        self.sync_in = None
        if self.sim.rest_snapshots:
            book = self.book
            result = getattr(book, "apply_snapshot")(self.sim.rest_snapshot())  # noqa: B009
            truth = None
            if result.outcome is Outcome.APPLIED:
                assert book.last_update_id is not None
                truth = self.sim.by_id[book.last_update_id]
            self._after(result, truth)
        else:
            self.deliver(self.sim.snapshot())

    def tick(self) -> None:
        if self.sync_in is not None:
            self.sync_in -= 1
            if self.sync_in < 0:
                self.sync()

    def play(self, plan: Plan) -> Run:
        self.plan_delay = plan.sync_delay
        sim = self.sim
        if sim.streams_snapshots:
            self.deliver(sim.snapshot())
        held: Delivery | None = None
        for index, (ops, draw) in enumerate(plan.steps):
            fault = plan.faults.get(index)
            other = sim.extra(draw) if fault == "extra" else None
            delivery = sim.step(ops, draw)
            out: list[Delivery] = []
            if fault == "drop":
                pass
            elif fault == "swap" and held is None:
                held = delivery
                continue
            elif fault == "dup":
                out = [delivery, delivery]
            elif fault == "corrupt":
                bad = sim.corrupt(delivery)
                out = [bad] if bad is not None else [delivery]
            elif other is not None:
                out = [other, delivery]
            else:
                out = [delivery]
            if held is not None:
                out.append(held)
                held = None
            for item in out:
                self.deliver(item)
                self.tick()
        if held is not None:
            self.deliver(held)
        return self.run

    def recover(self) -> None:
        """After the plan: clean steps (and the snapshots asked for) until LIVE; the
        book must then equal the venue's book."""
        for _ in range(4):
            if self.sync_in is not None:
                self.sync()
            self.deliver(self.sim.step([], 1))
            if self.sync_in is not None:
                self.sync()
            if self.book.is_live:
                break
        self.deliver(self.sim.step([], 1))
        assert self.book.is_live, self.book.last_resync
        assert book_view(self.book) == self.sim.view()
