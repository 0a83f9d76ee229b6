"""Venue dialects of :class:`~defi_ws.testing.simulator.ExchangeSimulator`.

One module per venue, each a :class:`VenueDialect` the simulator core calls:
:mod:`~defi_ws.testing.dialects.generic` (defi-ws' own JSON protocol),
:mod:`~defi_ws.testing.dialects.binance` (spot and USD-M market streams),
:mod:`~defi_ws.testing.dialects.okx` (v5), :mod:`~defi_ws.testing.dialects.bybit` (v5),
:mod:`~defi_ws.testing.dialects.coinbase` (Advanced Trade),
:mod:`~defi_ws.testing.dialects.kraken` (spot v2) and
:mod:`~defi_ws.testing.dialects.hyperliquid`. Pass a :class:`Dialect` value for a
dialect's defaults, or a configured instance::

    ExchangeSimulator(dialect=Dialect.OKX)
    ExchangeSimulator(dialect=OkxDialect(channels=ALL_CHANNELS, idle_timeout_s=3.0))
"""

from __future__ import annotations

from defi_ws.testing.dialects.base import Dialect, Event, VenueDialect
from defi_ws.testing.dialects.binance import BinanceDialect, Product
from defi_ws.testing.dialects.bybit import BybitCredentials, BybitDialect
from defi_ws.testing.dialects.coinbase import CoinbaseDialect
from defi_ws.testing.dialects.generic import GenericDialect
from defi_ws.testing.dialects.hyperliquid import HyperliquidDialect
from defi_ws.testing.dialects.kraken import KrakenDialect
from defi_ws.testing.dialects.okx import OkxCredentials, OkxDialect

__all__ = [
    "BinanceDialect",
    "BybitCredentials",
    "BybitDialect",
    "CoinbaseDialect",
    "Dialect",
    "Event",
    "GenericDialect",
    "HyperliquidDialect",
    "KrakenDialect",
    "OkxCredentials",
    "OkxDialect",
    "Product",
    "VenueDialect",
    "resolve",
]


def resolve(dialect: Dialect | str | VenueDialect) -> VenueDialect:
    """The dialect object for a :class:`Dialect` value, its string, or an instance."""
    if isinstance(dialect, VenueDialect):
        return dialect
    return Dialect(dialect).implementation()
