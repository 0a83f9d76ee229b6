"""Typed Bybit v5 pushes: ``msgspec.Struct`` classes (the ``defi-ws[msgspec]`` extra).

Field names are Bybit's own (``T``, ``s``, ``S``, ``v``, ``p``, ``u``, ``seq``,
``bid1Price``...), as in the v5 docs' push samples (``docs/v5/websocket/public/trade.mdx``,
``orderbook.mdx``, ``ticker.mdx``). Prices and sizes stay strings, as Bybit sends them.

* :class:`Trade` (``publicTrade.{symbol}``: ``data`` is a list of trades),
  :class:`BookData` (``orderbook.{depth}.{symbol}``: a snapshot or a delta;
  ``orderbook.1`` is the best bid and offer), :class:`Ticker` (``tickers.{symbol}``;
  derivatives send deltas, so every field but ``symbol`` is optional).
* A book level is ``[price, size]``; size ``"0"`` removes a level in a delta.
* :class:`Push` is the envelope: ``Push[list[Trade]]``, ``Push[BookData]``,
  ``Push[Ticker]``.

:func:`push_decoder` builds a ``decode`` for one channel type: its pushes become
Structs, anything else (acks, pongs, refusals) stays a dict.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = ["BookData", "Push", "Ticker", "Trade", "push_decoder"]

T = TypeVar("T")

#: ``[price, size]``.
Level = tuple[str, str]


class Trade(msgspec.Struct, frozen=True):
    """One trade of a ``publicTrade`` push.

    Attributes:
        T: trade time, ms since the epoch.
        s: symbol.
        S: the taker's side, ``"Buy"`` or ``"Sell"``.
        v: size.
        p: price.
        L: tick direction (``"PlusTick"``...; not on spot).
        i: trade id.
        BT: whether it was a block trade.
        seq: cross sequence (shared by the trades of one match).
        RPI: whether it was a retail price improvement order (spot).
        mP: mark price (options).
        iP: index price (options).
        mIv: mark IV (options).
        iv: IV (options).
    """

    T: int
    s: str
    S: str
    v: str
    p: str
    i: str
    BT: bool = False
    L: str | None = None
    seq: int | None = None
    RPI: bool | None = None
    mP: str | None = None
    iP: str | None = None
    mIv: str | None = None
    iv: str | None = None


class BookData(msgspec.Struct, frozen=True):
    """The ``data`` of an ``orderbook`` push (snapshot or delta).

    Attributes:
        s: symbol.
        b: bid levels, best first.
        a: ask levels, best first.
        u: update id (``1`` on a service-restart snapshot).
        seq: cross sequence (comparable across depths).
    """

    s: str
    b: list[Level]
    a: list[Level]
    u: int
    seq: int | None = None


class Ticker(msgspec.Struct, frozen=True):
    """The ``data`` of a ``tickers`` push (a snapshot, or a delta on derivatives).

    Attributes:
        symbol: the symbol.
        lastPrice: last price.
        bid1Price: best bid price (derivatives).
        bid1Size: best bid size (derivatives).
        ask1Price: best ask price (derivatives).
        ask1Size: best ask size (derivatives).
        markPrice: mark price (derivatives).
        indexPrice: index price.
        highPrice24h: 24 h high.
        lowPrice24h: 24 h low.
        prevPrice24h: price 24 h ago.
        volume24h: 24 h volume.
        turnover24h: 24 h turnover.
        price24hPcnt: 24 h change, a fraction.
        openInterest: open interest (derivatives).
        fundingRate: funding rate (perpetuals).
        nextFundingTime: next funding time, ms (perpetuals).
        usdIndexPrice: USD index price (spot).
    """

    symbol: str
    lastPrice: str | None = None
    bid1Price: str | None = None
    bid1Size: str | None = None
    ask1Price: str | None = None
    ask1Size: str | None = None
    markPrice: str | None = None
    indexPrice: str | None = None
    highPrice24h: str | None = None
    lowPrice24h: str | None = None
    prevPrice24h: str | None = None
    volume24h: str | None = None
    turnover24h: str | None = None
    price24hPcnt: str | None = None
    openInterest: str | None = None
    fundingRate: str | None = None
    nextFundingTime: str | None = None
    usdIndexPrice: str | None = None


class Push(msgspec.Struct, Generic[T], frozen=True):
    """A push: ``{"topic", "type": "snapshot"|"delta", "ts", "data", ...}``.

    Attributes:
        topic: the topic (``"publicTrade.BTCUSDT"``).
        type: ``"snapshot"`` or ``"delta"``.
        ts: when Bybit generated it, ms since the epoch.
        data: the payload.
        cts: matching engine time, ms (books).
        cs: cross sequence (tickers).
        id: message id (options' trades).
    """

    topic: str
    type: str
    ts: int
    data: T
    cts: int | None = None
    cs: int | None = None
    id: str | None = None


def push_decoder(item: Any) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.bybit.Bybit` turning pushes into ``Push[item]``.

    Args:
        item: ``list[Trade]``, :class:`BookData` or :class:`Ticker`.

    Returns:
        The decoder; messages that are not such pushes (acks, pongs, refusals) fall
        back to ``orjson.loads``.
    """
    return struct_decoder(Push[item], fallback=orjson.loads)
