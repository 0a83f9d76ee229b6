"""Venue adapters: handlers that know one venue's protocol, limits and rules.

Each adapter is an :class:`~defi_ws.handler.ExchangeHandler` for
:class:`~defi_ws.client.FeedClient` and :class:`~defi_ws.pool.FeedPool`, built on
:class:`~defi_ws.venues._adapter.VenueAdapter` (the URL, decode, limits, dedup and
``on_data`` plumbing they share), that declares
the venue's ``limits`` (:class:`~defi_ws.handler.VenueLimits`), its pool
de-duplication (``dedup``), its recommended ``heartbeat`` (FeedClient's default with
it), its acks and notices (``classify``) and raw-byte ``control_prefixes`` tight enough
that data messages skip the control router::

    from defi_ws import FeedPool
    from defi_ws.venues import adapter_for

    handler, topics = adapter_for("binance:btcusdt@trade,ethusdt@trade", on_data=print)
    async with FeedPool(handler, topics=topics) as pool:
        ...

========================  =====================================  ==================
name                      class                                  module
========================  =====================================  ==================
``binance``               :class:`~.binance.BinanceSpot`          :mod:`.binance`
``binance-usdm``          :class:`~.binance.BinanceUsdm`          :mod:`.binance`
``okx``                   :class:`~.okx.Okx`                      :mod:`.okx`
``bybit``                 :class:`~.bybit.Bybit` (spot)           :mod:`.bybit`
``bybit-linear``          :class:`~.bybit.BybitLinear`            :mod:`.bybit`
``bybit-inverse``         :class:`~.bybit.BybitInverse`           :mod:`.bybit`
``bybit-option``          :class:`~.bybit.BybitOption`            :mod:`.bybit`
``coinbase``              :class:`~.coinbase.Coinbase`            :mod:`.coinbase`
``kraken``                :class:`~.kraken.Kraken`                :mod:`.kraken`
``hyperliquid``           :class:`~.hyperliquid.Hyperliquid`      :mod:`.hyperliquid`
========================  =====================================  ==========="""

from __future__ import annotations

from typing import Any

from defi_ws.venues._adapter import VenueAdapter
from defi_ws.venues.binance import BinanceSpot, BinanceUsdm, usdm_endpoint
from defi_ws.venues.bybit import Bybit, BybitInverse, BybitLinear, BybitOption
from defi_ws.venues.coinbase import Coinbase
from defi_ws.venues.hyperliquid import Hyperliquid
from defi_ws.venues.kraken import Kraken, normalise_topic
from defi_ws.venues.okx import Okx

__all__ = [
    "ADAPTERS",
    "BinanceSpot",
    "BinanceUsdm",
    "Bybit",
    "BybitInverse",
    "BybitLinear",
    "BybitOption",
    "Coinbase",
    "Hyperliquid",
    "Kraken",
    "Okx",
    "VenueAdapter",
    "adapter_for",
    "parse_spec",
]

#: Adapter classes by venue name (the prefix of a spec).
ADAPTERS: dict[str, type[VenueAdapter]] = {
    "binance": BinanceSpot,
    "binance-usdm": BinanceUsdm,
    "okx": Okx,
    "bybit": Bybit,
    "bybit-linear": BybitLinear,
    "bybit-inverse": BybitInverse,
    "bybit-option": BybitOption,
    "coinbase": Coinbase,
    "kraken": Kraken,
    "hyperliquid": Hyperliquid,
}


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """Split ``"venue:topic[,topic...]"`` into the venue name and its topics.

    Topics are spelled as each venue expects them: Binance symbols lower-cased
    (``BTCUSDT@trade`` -> ``btcusdt@trade``), Bybit symbols (the last dotted part)
    upper-cased (``publicTrade.btcusdt`` -> ``publicTrade.BTCUSDT``), Coinbase products
    upper-cased (``level2:btc-usd`` -> ``level2:BTC-USD``), Kraken topics canonical
    (``book:btc/usd:10`` -> ``book:BTC/USD``). An OKX or Hyperliquid topic may hold
    commas (``orders:instType=SPOT,instId=BTC-USDT``): a piece with an ``=`` and no
    ``:`` continues the topic before it.

    Raises:
        ValueError: no venue, an unknown venue or no topic.
    """
    venue, sep, rest = spec.strip().partition(":")
    venue = venue.strip().lower()
    if not sep or venue not in ADAPTERS:
        raise ValueError(f"{spec!r}: expected '<venue>:<topic>[,<topic>...]' with a venue "
                         f"among {sorted(ADAPTERS)}")
    topics: list[str] = []
    for piece in (p.strip() for p in rest.split(",")):
        if not piece:
            continue
        if topics and "=" in piece and ":" not in piece:
            topics[-1] += "," + piece
        else:
            topics.append(piece)
    if venue.startswith("binance"):
        topics = [t.partition("@")[0].lower() + t[len(t.partition("@")[0]):] for t in topics]
    elif venue.startswith("bybit"):
        topics = [f"{head}.{symbol.upper()}" if dot else symbol
                  for head, dot, symbol in (t.rpartition(".") for t in topics)]
    elif venue == "coinbase":
        topics = [t.partition(":")[0] + t.partition(":")[1] + t.partition(":")[2].upper()
                  for t in topics]
    elif venue == "kraken":
        topics = [normalise_topic(t) for t in topics]
    if not topics:
        raise ValueError(f"{spec!r}: no topic after '{venue}:'")
    return venue, list(dict.fromkeys(topics))


def adapter_for(spec: str, **options: Any) -> tuple[VenueAdapter, list[str]]:
    """The handler and topics for a spec like ``"binance:btcusdt@trade"``.

    ``binance-usdm`` picks the endpoint of the split (``/public`` or ``/market``) from
    the topics; they must all be served by the same one.

    Args:
        spec: ``"<venue>:<topic>[,<topic>...]"`` (see :func:`parse_spec`).
        **options: passed to the adapter's constructor (``url``, ``on_data``...).

    Returns:
        ``(handler, topics)``.

    Raises:
        ValueError: the spec is malformed, names an unknown venue, or mixes USD-M
            topics of two endpoints.
    """
    venue, topics = parse_spec(spec)
    if venue == "binance-usdm" and "endpoint" not in options:
        endpoints = {usdm_endpoint(t) for t in topics}
        if len(endpoints) > 1:
            by = {e.value: [t for t in topics if usdm_endpoint(t) is e] for e in endpoints}
            raise ValueError(f"{spec!r}: USD-M topics are served on different endpoints "
                             f"{by}: use one spec per endpoint")
        options["endpoint"] = endpoints.pop()
    return ADAPTERS[venue](**options), topics
