"""Typed Binance market events: ``msgspec.Struct`` classes (the ``defi-ws[msgspec]`` extra).

Field names are Binance's own (one letter each, as on the wire), so a Struct reads
like the docs' payloads (``web-socket-streams.md``; USD-M "WebSocket Market Streams").
Prices and sizes stay strings, as Binance sends them (parse them as decimals).

* :class:`Trade` (``<symbol>@trade``), :class:`AggTrade` (``@aggTrade``) and
  :class:`DepthUpdate` (``@depth``; USD-M adds ``T`` and ``pu``) are tagged by their
  ``"e"`` field, so :data:`Event` decodes any of them.
* :class:`BookTicker` (``@bookTicker``): spot sends it without ``"e"`` (USD-M adds
  ``e``, ``E``, ``T``), so it is not part of :data:`Event`.
* :class:`Combined` is the ``/stream`` envelope: ``Combined[Event]``,
  ``Combined[BookTicker]``.

:func:`event_decoder` builds a decoder for a handler's ``decode``: events become
Structs; anything else (acks, ``serverShutdown``, other streams) falls back to dicts.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, Union

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = [
    "AggTrade",
    "BookTicker",
    "Combined",
    "DepthUpdate",
    "Event",
    "Trade",
    "event_decoder",
]

T = TypeVar("T")


class Trade(msgspec.Struct, tag_field="e", tag="trade", frozen=True):
    """A trade (``<symbol>@trade``).

    Attributes:
        E: event time (ms).
        s: symbol (``"BNBBTC"``).
        t: trade id, consecutive per symbol.
        p: price.
        q: quantity.
        T: trade time (ms).
        m: whether the buyer was the maker.
        M: ignore (spot only).
        b: buyer order id (older spot payloads only).
        a: seller order id (older spot payloads only).
    """

    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool | None = None
    b: int | None = None
    a: int | None = None

    def stream_seq(self) -> tuple[str, int]:
        """``(stream, trade id)``: the sequence of ``<symbol>@trade``."""
        return (self.s.lower() + "@trade", self.t)


class AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade", frozen=True):
    """An aggregate trade (``<symbol>@aggTrade``).

    Attributes:
        E: event time (ms).
        s: symbol.
        a: aggregate trade id, consecutive per symbol.
        p: price.
        q: quantity.
        f: first trade id.
        l: last trade id.
        T: trade time (ms).
        m: whether the buyer was the maker.
        M: ignore (spot only).
    """

    E: int
    s: str
    a: int
    p: str
    q: str
    f: int
    l: int  # noqa: E741 - Binance's name
    T: int
    m: bool
    M: bool | None = None

    def stream_seq(self) -> tuple[str, int]:
        """``(stream, aggregate trade id)``: the sequence of ``<symbol>@aggTrade``."""
        return (self.s.lower() + "@aggTrade", self.a)


class DepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate", frozen=True):
    """A diff. depth update (``<symbol>@depth``, ``@depth@100ms``...).

    Attributes:
        E: event time (ms).
        s: symbol.
        U: first update id in the event.
        u: final update id in the event.
        b: bids to update: ``[price, quantity]`` (quantity ``"0"`` removes the level).
        a: asks to update.
        T: transaction time (ms; USD-M only).
        pu: the previous event's final update id (USD-M only).
    """

    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    T: int | None = None
    pu: int | None = None

    def stream_seq(self) -> None:
        """Depth update ids are not consecutive per event: no sequence here."""
        return None


class BookTicker(msgspec.Struct, frozen=True):
    """Best bid and offer (``<symbol>@bookTicker``).

    Attributes:
        u: order book update id.
        s: symbol.
        b: best bid price.
        B: best bid quantity.
        a: best ask price.
        A: best ask quantity.
        E: event time (ms; USD-M only).
        T: transaction time (ms; USD-M only).
    """

    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    E: int | None = None
    T: int | None = None

    def stream_seq(self) -> None:
        """Book ticker update ids are not consecutive: no sequence here."""
        return None


class Combined(msgspec.Struct, Generic[T], frozen=True):
    """A combined-stream envelope: ``{"stream": <name>, "data": <event>}``.

    Attributes:
        stream: the stream name (``"btcusdt@trade"``).
        data: the event.
    """

    stream: str
    data: T

    def stream_seq(self) -> tuple[str, int] | None:
        """``(stream, id)`` of a trade or aggregate trade inside."""
        inner = getattr(self.data, "stream_seq", None)
        numbered = inner() if callable(inner) else None
        return None if numbered is None else (self.stream, numbered[1])


#: Any event with an ``"e"`` tag that has a Struct here.
Event = Union[Trade, AggTrade, DepthUpdate]  # noqa: UP007 - a runtime value for msgspec


def event_decoder(combined: bool = True) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.binance.BinanceSpot` / ``BinanceUsdm``.

    Args:
        combined: decode ``Combined[Event]`` envelopes (``/stream``) or bare events.

    Returns:
        A decoder: trades, aggregate trades and depth updates become Structs; other
        messages (acks, ``serverShutdown``, other streams) become dicts.
    """
    type_: Any = Combined[Event] if combined else Event
    return struct_decoder(type_, fallback=orjson.loads)
