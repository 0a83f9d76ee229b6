"""Typed Coinbase Advanced Trade messages: ``msgspec.Struct`` classes (``defi-ws[msgspec]``).

Field names are Coinbase's own (``product_id``, ``trade_id``, ``price_level``,
``new_quantity``, ``sequence_num``...), as in the Advanced Trade WebSocket channel docs'
samples. Prices and sizes stay strings, as Coinbase sends them.

* :class:`Trade` (``market_trades``), :class:`Ticker` (``ticker``: last price and the
  best bid and offer), :class:`L2Update` (one level of a ``level2`` snapshot or update,
  pushed on channel ``l2_data``).
* Each message is an envelope ``{"channel", "client_id", "timestamp",
  "sequence_num", "events": [...]}``: :class:`Message` ``[TradesEvent]``,
  ``[TickerEvent]`` or ``[L2Event]``.

:func:`message_decoder` builds a ``decode`` for one channel: its messages become
Structs, anything else (subscriptions replies, errors, heartbeats, other channels)
stays a dict.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = [
    "L2Event",
    "L2Update",
    "Message",
    "Ticker",
    "TickerEvent",
    "Trade",
    "TradesEvent",
    "message_decoder",
]

T = TypeVar("T")


class Trade(msgspec.Struct, frozen=True):
    """One trade of a ``market_trades`` event.

    Attributes:
        trade_id: the trade id.
        product_id: the product, e.g. ``"BTC-USD"``.
        price: price.
        size: size.
        side: the maker's side, ``"BUY"`` or ``"SELL"``.
        time: trade time (RFC 3339).
    """

    trade_id: str
    product_id: str
    price: str
    size: str
    side: str
    time: str


class TradesEvent(msgspec.Struct, frozen=True):
    """A ``market_trades`` event: ``snapshot`` (recent trades) or ``update``.

    Attributes:
        type: ``"snapshot"`` or ``"update"``.
        trades: the trades (batched every 250 ms).
    """

    type: str
    trades: list[Trade]


class Ticker(msgspec.Struct, frozen=True):
    """One product of a ``ticker`` event: last price, 24 h stats and the best bid/offer.

    Attributes:
        type: ``"ticker"``.
        product_id: the product.
        price: last trade price.
        volume_24_h: 24 h volume.
        low_24_h: 24 h low.
        high_24_h: 24 h high.
        low_52_w: 52 week low.
        high_52_w: 52 week high.
        price_percent_chg_24_h: 24 h change, percent.
        best_bid: best bid price.
        best_bid_quantity: size at the best bid.
        best_ask: best ask price.
        best_ask_quantity: size at the best ask.
    """

    type: str
    product_id: str
    price: str
    volume_24_h: str | None = None
    low_24_h: str | None = None
    high_24_h: str | None = None
    low_52_w: str | None = None
    high_52_w: str | None = None
    price_percent_chg_24_h: str | None = None
    best_bid: str | None = None
    best_bid_quantity: str | None = None
    best_ask: str | None = None
    best_ask_quantity: str | None = None


class TickerEvent(msgspec.Struct, frozen=True):
    """A ``ticker`` event.

    Attributes:
        type: ``"snapshot"`` or ``"update"``.
        tickers: one entry per product.
    """

    type: str
    tickers: list[Ticker]


class L2Update(msgspec.Struct, frozen=True):
    """One price level of a ``level2`` event.

    Attributes:
        side: ``"bid"`` or ``"offer"``.
        event_time: time of the change in the matching engine (RFC 3339).
        price_level: the price.
        new_quantity: the absolute size now at that price (``"0"``: removed).
    """

    side: str
    event_time: str
    price_level: str
    new_quantity: str


class L2Event(msgspec.Struct, frozen=True):
    """A ``level2`` event (channel ``l2_data``): the whole book, or changes to it.

    Attributes:
        type: ``"snapshot"`` or ``"update"``.
        product_id: the product.
        updates: the levels.
    """

    type: str
    product_id: str
    updates: list[L2Update]


class Message(msgspec.Struct, Generic[T], frozen=True):
    """The envelope of every Advanced Trade message.

    Attributes:
        channel: ``"market_trades"``, ``"ticker"``, ``"l2_data"``...
        timestamp: when the message was sent (RFC 3339).
        sequence_num: the connection's message counter (every channel counts).
        events: the events.
        client_id: ``""`` (absent on the production feed, per Coinbase's AsyncAPI).
    """

    channel: str
    timestamp: str
    sequence_num: int
    events: list[T]
    client_id: str = ""


def message_decoder(event: type[Any]) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.coinbase.Coinbase` turning one channel's
    messages into ``Message[event]``.

    Args:
        event: :class:`TradesEvent`, :class:`TickerEvent` or :class:`L2Event`.

    Returns:
        The decoder; messages that do not fit (subscriptions replies, errors,
        heartbeats, other channels) fall back to ``orjson.loads``.
    """
    return struct_decoder(Message[event], fallback=orjson.loads)  # type: ignore[valid-type]
