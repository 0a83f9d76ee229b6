"""Typed Hyperliquid pushes: ``msgspec.Struct`` classes (the ``defi-ws[msgspec]`` extra).

Field names are Hyperliquid's own, from the TypeScript schemas of the docs'
"Subscriptions" page (``WsTrade``, ``WsBook``, ``WsLevel``, ``WsBbo``, ``AllMids``); the
envelope is ``{"channel": <type>, "data": ...}``. Prices and sizes stay strings, as
Hyperliquid sends them.

* :class:`Trade` (``trades``: a push carries a list), :class:`Book` (``l2Book``: the
  whole book, ``levels = [bids, asks]``), :class:`Bbo` (``bbo``: ``[bid, ask]``, either
  may be null), :class:`AllMids` (``allMids``: mid price per coin), :class:`Level`
  (``{px, sz, n}``).
* :class:`TradesPush`, :class:`BookPush`, :class:`BboPush`, :class:`AllMidsPush` are the
  envelopes, tagged by ``channel``; each has a ``topic()`` (``"trades:BTC"``...).

:func:`push_decoder` builds a ``decode`` for some or all of these channels: their pushes
become Structs, anything else (``subscriptionResponse``, ``error``) stays a dict.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = [
    "AllMids",
    "AllMidsPush",
    "Bbo",
    "BboPush",
    "Book",
    "BookPush",
    "Level",
    "Trade",
    "TradesPush",
    "push_decoder",
]


class Level(msgspec.Struct, frozen=True):
    """One price level (``WsLevel``).

    Attributes:
        px: price.
        sz: total size at the price.
        n: number of orders at the price.
    """

    px: str
    sz: str
    n: int


class Trade(msgspec.Struct, frozen=True):
    """One trade (``WsTrade``).

    Attributes:
        coin: the coin (``"BTC"``; spot ``"@107"``, HIP-3 ``"xyz:SP500"``).
        side: the aggressor's side, ``"B"`` (bid: a buy) or ``"A"`` (ask: a sell).
        px: price.
        sz: size.
        time: block time, ms since the epoch.
        hash: the transaction hash.
        tid: the trade id (a 50-bit hash: unique with ``(time, coin)``, not ordered).
        users: ``[buyer, seller]`` addresses.
    """

    coin: str
    side: str
    px: str
    sz: str
    time: int
    hash: str
    tid: int
    users: list[str] | None = None


class Book(msgspec.Struct, frozen=True):
    """A whole ``l2Book`` (``WsBook``): each push replaces the book.

    Attributes:
        coin: the coin.
        levels: ``[bids, asks]``, best first.
        time: block time, ms since the epoch.
    """

    coin: str
    levels: tuple[list[Level], list[Level]]
    time: int


class Bbo(msgspec.Struct, frozen=True):
    """The best bid and offer (``WsBbo``).

    Attributes:
        coin: the coin.
        time: block time, ms since the epoch.
        bbo: ``[best bid, best ask]``; a side without orders is null.
    """

    coin: str
    time: int
    bbo: tuple[Level | None, Level | None]


class AllMids(msgspec.Struct, frozen=True):
    """Mid prices of every coin (``AllMids``).

    Attributes:
        mids: price by coin.
        dex: the perp dex, when the subscription named one.
    """

    mids: dict[str, str]
    dex: str | None = None


class TradesPush(msgspec.Struct, frozen=True, tag_field="channel", tag="trades"):
    """``{"channel": "trades", "data": [Trade, ...]}``."""

    data: list[Trade]

    def topic(self) -> str:
        """``"trades:<coin>"`` (``"trades"`` for an empty push)."""
        return f"trades:{self.data[0].coin}" if self.data else "trades"


class BookPush(msgspec.Struct, frozen=True, tag_field="channel", tag="l2Book"):
    """``{"channel": "l2Book", "data": Book}``."""

    data: Book

    def topic(self) -> str:
        """``"l2Book:<coin>"`` (options such as ``nSigFigs`` are not in the push)."""
        return f"l2Book:{self.data.coin}"


class BboPush(msgspec.Struct, frozen=True, tag_field="channel", tag="bbo"):
    """``{"channel": "bbo", "data": Bbo}``."""

    data: Bbo

    def topic(self) -> str:
        """``"bbo:<coin>"``."""
        return f"bbo:{self.data.coin}"


class AllMidsPush(msgspec.Struct, frozen=True, tag_field="channel", tag="allMids"):
    """``{"channel": "allMids", "data": AllMids}``."""

    data: AllMids

    def topic(self) -> str:
        """``"allMids"`` (``"allMids:dex=<dex>"`` for another perp dex)."""
        return "allMids" if not self.data.dex else f"allMids:dex={self.data.dex}"


_PUSHES: dict[type[Any], type[Any]] = {
    Trade: TradesPush, Book: BookPush, Bbo: BboPush, AllMids: AllMidsPush}


def push_decoder(*items: type[Any]) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.hyperliquid.Hyperliquid`: pushes become Structs.

    Args:
        *items: the channels to decode, by item type (:class:`Trade`, :class:`Book`,
            :class:`Bbo`, :class:`AllMids`); none means all four.

    Returns:
        The decoder: a push of those channels becomes its envelope Struct
        (:class:`TradesPush`...); any other message (``subscriptionResponse``,
        ``error``, another channel) falls back to ``orjson.loads`` (a dict).

    Raises:
        ValueError: an item type that is not one of the four.
    """
    chosen = items or tuple(_PUSHES)
    unknown = [item for item in chosen if item not in _PUSHES]
    if unknown:
        raise ValueError(f"no Hyperliquid push holds {unknown}; choose among "
                         f"{[t.__name__ for t in _PUSHES]}")
    pushes = tuple(_PUSHES[item] for item in chosen)
    target: Any = pushes[0] if len(pushes) == 1 else Union[pushes]  # noqa: UP007
    return struct_decoder(target, fallback=orjson.loads)
