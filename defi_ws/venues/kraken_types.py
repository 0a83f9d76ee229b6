"""Typed Kraken spot v2 pushes: ``msgspec.Struct`` classes (the ``defi-ws[msgspec]`` extra).

Field names are Kraken's own (``symbol``, ``trade_id``, ``bid_qty``, ``checksum``...),
as in the v2 docs' samples (https://docs.kraken.com/api/docs/websocket-v2/trade,
``.../ticker``, ``.../book``). Kraken writes prices and quantities as JSON *numbers*
with the instrument's precision (``0.10000000``): they are decoded as
:class:`~decimal.Decimal` here, so no digit is lost (the book checksum hashes them).

* :class:`Trade` (``trade``), :class:`Ticker` (``ticker``: best bid and offer, last
  trade, 24 h statistics), :class:`Book` (``book``: a snapshot or an update of one
  symbol, with its CRC32 ``checksum``) made of :class:`BookLevel` entries.
* :class:`Push` is the envelope: ``Push[Trade]`` is
  ``{"channel": "trade", "type": "snapshot"|"update", "data": [Trade, ...]}``.

:func:`push_decoder` builds a ``decode`` for one channel: its pushes become Structs,
anything else (acks, errors, ``status``, ``heartbeat``) stays a dict.
:func:`exact_decoder` decodes every message to plain dicts with Decimal numbers: what
:class:`~defi_ws.books.KrakenBook` needs without configured precisions.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = ["Book", "BookLevel", "Push", "Ticker", "Trade", "exact_decoder", "push_decoder"]

T = TypeVar("T")


class Trade(msgspec.Struct, frozen=True):
    """One trade of a ``trade`` push.

    Attributes:
        symbol: the currency pair, ``"BTC/USD"``.
        side: the taker's side, ``"buy"`` or ``"sell"``.
        price: the price.
        qty: the quantity.
        ord_type: the taker's order type, ``"market"`` or ``"limit"``.
        trade_id: Kraken's trade id ("a sequence number, unique per book").
        timestamp: the trade time, RFC 3339.
    """

    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    ord_type: str
    trade_id: int
    timestamp: str


class Ticker(msgspec.Struct, frozen=True):
    """A ``ticker`` push: level 1 data (best bid and offer, last trade, 24 h figures).

    Attributes:
        symbol: the currency pair.
        bid: best bid price.
        bid_qty: best bid quantity.
        ask: best ask price.
        ask_qty: best ask quantity.
        last: last traded price.
        volume: 24 h volume, in the base currency.
        vwap: 24 h volume weighted average price.
        low: 24 h lowest trade price.
        high: 24 h highest trade price.
        change: 24 h price change, in the quote currency.
        change_pct: 24 h price change, in percentage points.
        timestamp: the time of the update, RFC 3339 (absent in older samples).
    """

    symbol: str
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    last: Decimal
    volume: Decimal
    vwap: Decimal
    low: Decimal
    high: Decimal
    change: Decimal
    change_pct: Decimal
    timestamp: str | None = None


class BookLevel(msgspec.Struct, frozen=True):
    """One price level (``qty`` 0 removes the level in an update).

    Attributes:
        price: the price.
        qty: the total quantity at that price.
    """

    price: Decimal
    qty: Decimal


class Book(msgspec.Struct, frozen=True):
    """One symbol's ``book`` snapshot or update.

    Attributes:
        symbol: the currency pair.
        bids: bid levels (best first in snapshots).
        asks: ask levels.
        checksum: CRC32 (unsigned) of the top 10 levels after this message (always
            sent in v2; None if absent).
        timestamp: the time of the last change, RFC 3339 (updates).
    """

    symbol: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    checksum: int | None = None
    timestamp: str | None = None


class Push(msgspec.Struct, Generic[T], frozen=True):
    """A push: ``{"channel": ..., "type": "snapshot"|"update", "data": [...]}``.

    Attributes:
        channel: ``"trade"``, ``"ticker"``, ``"book"``...
        type: ``"snapshot"`` or ``"update"``.
        data: the items.
    """

    channel: str
    type: str
    data: list[T]


def push_decoder(item: type[Any]) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.kraken.Kraken` turning pushes into ``Push[item]``.

    Args:
        item: :class:`Trade`, :class:`Ticker` or :class:`Book`.

    Returns:
        The decoder; messages that are not such pushes (acks, errors, ``status``,
        ``heartbeat``) fall back to ``orjson.loads`` (a ``pong`` never reaches
        decode).
    """
    return struct_decoder(Push[item], fallback=orjson.loads)  # type: ignore[valid-type]


def exact_decoder() -> Callable[[memoryview], Any]:
    """A ``decode`` giving plain dicts whose non-integer numbers are Decimals.

    ``0.10000000`` stays ``Decimal("0.10000000")``: the digits Kraken's book checksum
    hashes survive, so a :class:`~defi_ws.books.KrakenBook` needs no configured
    precision. About as fast as ``orjson.loads`` plus one Decimal per number.
    """
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(float_hook=Decimal)
    decode: Callable[[memoryview], Any] = decoder.decode
    return decode
