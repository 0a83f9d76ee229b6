"""Typed OKX v5 pushes: ``msgspec.Struct`` classes (the ``defi-ws[msgspec]`` extra).

Field names are OKX's own (``instId``, ``tradeId``, ``px``, ``sz``, ``seqId``...), as in
the v5 docs' push samples. Prices and sizes stay strings, as OKX sends them.

* :class:`Trade` (``trades``), :class:`Bbo` (``bbo-tbt``: best bid and offer),
  :class:`BookUpdate` (``books``, ``books5``...: a snapshot or an update; ``books5``
  snapshots carry ``instId`` and no ``action``).
* A book level is ``[price, size, "0" (deprecated), order count]``.
* :class:`Push` is the envelope: ``Push[Trade]`` is ``{"arg": Arg, "data": [Trade]}``.

:func:`push_decoder` builds a ``decode`` for one channel type: its pushes become
Structs, anything else (acks, login replies, notices, text ``pong``) stays a dict.

Importing this module needs msgspec: ``pip install 'defi-ws[msgspec]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import orjson

from defi_ws.typed import struct_decoder

__all__ = ["Arg", "Bbo", "BookUpdate", "Push", "Trade", "push_decoder"]

T = TypeVar("T")

#: ``[price, size, "0", order count]``.
Level = tuple[str, str, str, str]


class Arg(msgspec.Struct, frozen=True):
    """The channel a push belongs to.

    Attributes:
        channel: ``"trades"``, ``"books"``...
        instId: the instrument (public channels).
        instType: the instrument type (private channels).
        uid: the account (private pushes).
    """

    channel: str
    instId: str | None = None
    instType: str | None = None
    uid: str | None = None

    def topic(self) -> str:
        """The defi-ws topic (``"trades:BTC-USDT"``; see :func:`defi_ws.venues.okx.to_topic`)."""
        if self.instId is not None and self.instType is None:
            return f"{self.channel}:{self.instId}"
        rest = {k: v for k, v in (("instId", self.instId), ("instType", self.instType))
                if v is not None}
        if not rest:
            return self.channel
        return self.channel + ":" + ",".join(f"{k}={rest[k]}" for k in sorted(rest))


class Trade(msgspec.Struct, frozen=True):
    """One trade of a ``trades`` push.

    Attributes:
        instId: the instrument.
        tradeId: the (last aggregated) trade id.
        px: price.
        sz: size.
        side: the taker's side, ``"buy"`` or ``"sell"``.
        ts: trade time, ms since the epoch, as a string.
        count: how many trades were aggregated.
        source: ``"0"`` normal, ``"1"`` an enhanced liquidity program order.
        seqId: the push's sequence id.
    """

    instId: str
    tradeId: str
    px: str
    sz: str
    side: str
    ts: str
    count: str | None = None
    source: str | None = None
    seqId: int | None = None


class Bbo(msgspec.Struct, frozen=True):
    """A ``bbo-tbt`` push: the best bid and offer, tick by tick.

    Attributes:
        asks: the best ask level.
        bids: the best bid level.
        ts: time, ms since the epoch, as a string.
        seqId: the sequence id.
    """

    asks: list[Level]
    bids: list[Level]
    ts: str
    seqId: int | None = None


class BookUpdate(msgspec.Struct, frozen=True):
    """One book push (``books`` snapshot or update, ``books5`` snapshot...).

    Attributes:
        asks: ask levels (size ``"0"`` removes a level in updates).
        bids: bid levels.
        ts: time, ms since the epoch, as a string.
        checksum: CRC32 of the top 25 levels (always 0 since 2026-06-23).
        prevSeqId: the previous push's ``seqId`` (-1 on a snapshot).
        seqId: this push's sequence id.
        instId: the instrument (``books5``).
    """

    asks: list[Level]
    bids: list[Level]
    ts: str
    checksum: int | None = None
    prevSeqId: int | None = None
    seqId: int | None = None
    instId: str | None = None


class Push(msgspec.Struct, Generic[T], frozen=True):
    """A push: ``{"arg": ..., "action": "snapshot"|"update" (books), "data": [...]}``.

    Attributes:
        arg: the channel.
        data: the items.
        action: ``"snapshot"`` or ``"update"`` on incremental books, else None.
    """

    arg: Arg
    data: list[T]
    action: str | None = None


def push_decoder(item: type[Any]) -> Callable[[memoryview], Any]:
    """A ``decode`` for :class:`~defi_ws.venues.okx.Okx` turning pushes into ``Push[item]``.

    Args:
        item: :class:`Trade`, :class:`Bbo` or :class:`BookUpdate`.

    Returns:
        The decoder; messages that are not such pushes (acks, login replies,
        notices) fall back to ``orjson.loads`` (a text ``pong`` never reaches decode).
    """
    return struct_decoder(Push[item], fallback=orjson.loads)  # type: ignore[valid-type]
