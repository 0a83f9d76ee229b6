"""A simulated order book for the simulator's book channels: consistent, never crossed.

:class:`SimulatedBook` holds the price levels of one instrument in integer ticks of
0.01 (the precision of the simulator's prices), each with a size text. It starts from
a mid price (:meth:`SimulatedBook.__init__`) and follows it, one event at a time
(:meth:`SimulatedBook.move`), which returns exactly the levels that changed, a size of
``"0"`` for a level removed. So a client that applies a snapshot and then every change
holds the very book the simulator holds, which is what a venue's order book channel
promises. After every move:

* every bid is below the mid and every ask above it (never crossed, never locked);
* the ``near_levels`` slots of ``step`` ticks next to the mid hold a level on each
  side, so the top of the book follows the price;
* each side holds ``levels`` levels (fewer only when bids would go below one tick);
* levels are removed: those the mid moved over, one at random now and then, and the
  farthest when a side holds too many.

The book draws from its own ``random.Random``, so a seeded simulator stays
reproducible and other topics' streams do not change. A dialect gives the levels its
venue's shape (texts from :meth:`SimulatedBook.price_text`).
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort

__all__ = ["TICKS_PER_UNIT", "BookChange", "SimulatedBook"]

#: Ticks per unit of price: prices have two decimals, like the simulator's ``px``.
TICKS_PER_UNIT = 100

#: One side's changes of one move: ``(tick, size text)``, best first; ``"0"`` removes.
BookChange = list[tuple[int, str]]

_REMOVE_CHANCE = 0.3  # per move: a random level of one side is removed


def _size(rng: random.Random) -> str:
    return f"{rng.uniform(0.001, 2.0):.4f}"


class _Side:
    """One side: ticks in ascending order and their sizes; bids are best last."""

    __slots__ = ("asks", "sizes", "ticks")

    def __init__(self, asks: bool) -> None:
        self.asks = asks
        self.ticks: list[int] = []
        self.sizes: dict[int, str] = {}

    def best_first(self, n: int | None = None) -> list[int]:
        ticks = self.ticks
        if self.asks:
            return ticks[:n] if n is not None else list(ticks)
        count = len(ticks) if n is None else min(n, len(ticks))
        return ticks[len(ticks) - count:][::-1]

    def has_between(self, low: int, high: int) -> bool:
        index = bisect_left(self.ticks, low)
        return index < len(self.ticks) and self.ticks[index] <= high

    def set(self, tick: int, size: str, before: dict[int, str]) -> None:
        """Set a level; ``before`` keeps each touched level's size before the move."""
        old = self.sizes.get(tick)
        if old is None:
            insort(self.ticks, tick)
        before.setdefault(tick, old or "0")
        self.sizes[tick] = size

    def remove(self, tick: int, before: dict[int, str]) -> None:
        before.setdefault(tick, self.sizes.pop(tick))
        del self.ticks[bisect_left(self.ticks, tick)]

    def changes(self, before: dict[int, str]) -> BookChange:
        """The touched levels whose size differs from ``before``, best first."""
        sizes = self.sizes
        changed = [(tick, sizes.get(tick, "0")) for tick in before
                   if sizes.get(tick, "0") != before[tick]]
        changed.sort(reverse=not self.asks)
        return changed


class SimulatedBook:
    """The levels of one instrument's book, following a mid price (see the module doc).

    Args:
        mid: the price to build the first book around (> 0).
        rng: the random stream the book draws sizes and places from.
        levels: levels per side (>= 1).
        near_levels: slots next to the mid kept filled on each side (1..levels).

    Attributes:
        step: the width in ticks of one slot: about one basis point of the first mid.
        levels: as given.
        near_levels: as given.
    """

    def __init__(self, mid: float, rng: random.Random, *, levels: int = 40,
                 near_levels: int = 5) -> None:
        if not mid > 0:
            raise ValueError(f"mid must be > 0, got {mid!r}")
        if not 1 <= near_levels <= levels:
            raise ValueError(f"need 1 <= near_levels <= levels, got {near_levels}, {levels}")
        self.levels = levels
        self.near_levels = near_levels
        self.step = max(1, round(mid * TICKS_PER_UNIT / 10_000))
        self._rng = rng
        self._bids = _Side(asks=False)
        self._asks = _Side(asks=True)
        self._mid_tick = self._tick_of(mid)
        unused: dict[int, str] = {}
        self._pad(self._bids, unused)
        self._pad(self._asks, unused)

    @staticmethod
    def price_text(tick: int) -> str:
        """A tick as the price text (``12345`` -> ``"123.45"``)."""
        return f"{tick // TICKS_PER_UNIT}.{tick % TICKS_PER_UNIT:02d}"

    @staticmethod
    def _tick_of(price: float) -> int:
        return max(1, round(price * TICKS_PER_UNIT))

    def bids(self, n: int | None = None) -> list[tuple[int, str]]:
        """The best ``n`` bids (all: None), highest first, as ``(tick, size)``."""
        return [(tick, self._bids.sizes[tick]) for tick in self._bids.best_first(n)]

    def asks(self, n: int | None = None) -> list[tuple[int, str]]:
        """The best ``n`` asks (all: None), lowest first, as ``(tick, size)``."""
        return [(tick, self._asks.sizes[tick]) for tick in self._asks.best_first(n)]

    def move(self, mid: float, *, ask: bool, size: str) -> tuple[BookChange, BookChange]:
        """Follow the price to ``mid``; one level of one side takes ``size``.

        Args:
            mid: the new mid price.
            ask: the side whose level takes ``size`` (asks if True, else bids).
            size: the size text the event brings (non-zero).

        Returns:
            ``(bids, asks)``: the levels that changed, best first; ``"0"`` removes.
        """
        rng = self._rng
        mid_tick = self._mid_tick = self._tick_of(mid)
        bids, asks = self._bids, self._asks
        bids_before: dict[int, str] = {}
        asks_before: dict[int, str] = {}
        while bids.ticks and bids.ticks[-1] >= mid_tick:  # the mid moved over them
            bids.remove(bids.ticks[-1], bids_before)
        while asks.ticks and asks.ticks[0] <= mid_tick:
            asks.remove(asks.ticks[0], asks_before)
        self._fill_near(bids, bids_before)
        self._fill_near(asks, asks_before)
        side, before = (asks, asks_before) if ask else (bids, bids_before)
        top = side.best_first(self.near_levels)
        if top:
            side.set(rng.choice(top), size, before)
        if rng.random() < _REMOVE_CHANCE:
            side, before = (bids, bids_before) if rng.random() < 0.5 else (asks, asks_before)
            if len(side.ticks) > 1:
                side.remove(rng.choice(side.ticks), before)
        self._pad(bids, bids_before)
        self._pad(asks, asks_before)
        return bids.changes(bids_before), asks.changes(asks_before)

    def _fill_near(self, side: _Side, before: dict[int, str]) -> None:
        """A level in each of the ``near_levels`` slots next to the mid."""
        step, rng = self.step, self._rng
        for slot in range(self.near_levels):
            if side.asks:
                low = self._mid_tick + 1 + slot * step
                high = low + step - 1
            else:
                high = self._mid_tick - 1 - slot * step
                low = max(1, high - step + 1)
                if high < 1:
                    return
            if not side.has_between(low, high):
                side.set(rng.randint(low, high), _size(rng), before)

    def _pad(self, side: _Side, before: dict[int, str]) -> None:
        """Exactly ``levels`` levels: the farthest removed, or new ones beyond them."""
        step, rng, ticks = self.step, self._rng, side.ticks
        while len(ticks) > self.levels:
            side.remove(ticks[-1] if side.asks else ticks[0], before)
        while len(ticks) < self.levels:
            if side.asks:
                far = ticks[-1] if ticks else self._mid_tick
                tick = far + 1 + rng.randrange(step)
            else:
                far = ticks[0] if ticks else self._mid_tick
                tick = far - 1 - rng.randrange(step)
                if tick < 1:
                    tick = far - 1
                    if tick < 1:
                        return
            side.set(tick, _size(rng), before)
