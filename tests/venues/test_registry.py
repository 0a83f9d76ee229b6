"""``defi_ws.venues``: the adapter registry and ``venue:topic`` specs (for the CLI)."""

from __future__ import annotations

import pytest

from defi_ws.heartbeat import JsonPing, TextPing, WsPing
from defi_ws.venues import (
    ADAPTERS,
    BinanceSpot,
    BinanceUsdm,
    Bybit,
    BybitInverse,
    BybitLinear,
    BybitOption,
    Coinbase,
    Hyperliquid,
    Kraken,
    Okx,
    VenueAdapter,
    adapter_for,
    parse_spec,
)
from defi_ws.venues.binance import UsdmEndpoint


def test_registry_names_every_adapter() -> None:
    assert ADAPTERS == {"binance": BinanceSpot, "binance-usdm": BinanceUsdm, "okx": Okx,
                        "bybit": Bybit, "bybit-linear": BybitLinear,
                        "bybit-inverse": BybitInverse, "bybit-option": BybitOption,
                        "coinbase": Coinbase, "kraken": Kraken,
                        "hyperliquid": Hyperliquid}
    for name, adapter in ADAPTERS.items():
        assert adapter.venue == name
        assert adapter.limits.problems() == []


def test_every_adapter_is_a_venue_adapter_that_redacts_its_url() -> None:
    for adapter in ADAPTERS.values():
        assert issubclass(adapter, VenueAdapter)
    handler, _ = adapter_for("kraken:trade:BTC/USD", url="wss://k.example/v2?token=SECRET")
    assert repr(handler).startswith("Kraken(url=") and "SECRET" not in repr(handler)
    assert handler.url(0) == "wss://k.example/v2?token=SECRET"
    received: list[object] = []
    handler, _ = adapter_for("okx:trades:BTC-USDT", on_data=received.append)
    assert handler.data_sink == received.append and handler.auth_messages() == ()


def test_binance_specs() -> None:
    handler, topics = adapter_for("binance:btcusdt@trade")
    assert isinstance(handler, BinanceSpot) and topics == ["btcusdt@trade"]
    assert isinstance(handler.heartbeat, WsPing)
    spec = " Binance:BTCUSDT@aggTrade, ethusdt@depth@100ms,btcusdt@aggTrade "
    handler, topics = adapter_for(spec, url="ws://127.0.0.1:9/stream")
    assert topics == ["btcusdt@aggTrade", "ethusdt@depth@100ms"]  # lowercased, deduplicated
    assert handler.url(0) == "ws://127.0.0.1:9/stream"


def test_usdm_specs_pick_the_endpoint() -> None:
    handler, topics = adapter_for("binance-usdm:btcusdt@depth@100ms,ethusdt@bookTicker")
    assert topics == ["btcusdt@depth@100ms", "ethusdt@bookTicker"]
    assert isinstance(handler, BinanceUsdm) and handler.endpoint is UsdmEndpoint.PUBLIC
    assert handler.url(0) == "wss://fstream.binance.com/public/stream"
    handler, _ = adapter_for("binance-usdm:btcusdt@markPrice@1s")
    assert handler.endpoint is UsdmEndpoint.MARKET
    with pytest.raises(ValueError, match="different endpoints"):
        adapter_for("binance-usdm:btcusdt@depth,btcusdt@aggTrade")
    handler, _ = adapter_for("binance-usdm:btcusdt@aggTrade", endpoint="market", combined=False)
    assert handler.url(0) == "wss://fstream.binance.com/market/ws"


def test_okx_specs_keep_topics_with_colons_and_commas() -> None:
    handler, topics = adapter_for("okx:trades:BTC-USDT,bbo-tbt:ETH-USDT")
    assert isinstance(handler, Okx) and topics == ["trades:BTC-USDT", "bbo-tbt:ETH-USDT"]
    assert isinstance(handler.heartbeat, TextPing)
    assert parse_spec("okx:orders:instType=SPOT,instId=BTC-USDT,account,trades:X-Y") == (
        "okx", ["orders:instType=SPOT,instId=BTC-USDT", "account", "trades:X-Y"])


def test_bybit_specs_pick_the_product_and_upper_case_symbols() -> None:
    handler, topics = adapter_for("bybit-linear:publicTrade.btcusdt,orderbook.50.BTCUSDT")
    assert isinstance(handler, BybitLinear) and topics == [
        "publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"]
    assert handler.url(0) == BybitLinear.default_url == "wss://stream.bybit.com/v5/public/linear"
    assert isinstance(handler.heartbeat, JsonPing)
    handler, _ = adapter_for("bybit:tickers.BTCUSDT", url="ws://127.0.0.1:9/v5/public/spot")
    assert type(handler) is Bybit and handler.url(0) == "ws://127.0.0.1:9/v5/public/spot"


def test_coinbase_specs_upper_case_products() -> None:
    handler, topics = adapter_for("coinbase:level2:btc-usd, market_trades:ETH-USD,heartbeats")
    assert isinstance(handler, Coinbase)
    assert topics == ["level2:BTC-USD", "market_trades:ETH-USD", "heartbeats"]
    assert isinstance(handler.heartbeat, WsPing)
    assert handler.url(0) == Coinbase.default_url == "wss://advanced-trade-ws.coinbase.com"


def test_kraken_specs_are_spelled_canonically() -> None:
    handler, topics = adapter_for("kraken:trade:btc/usd, Book:ETH/USD:10,book:BTC/USD:25")
    assert isinstance(handler, Kraken) and isinstance(handler.heartbeat, JsonPing)
    assert topics == ["trade:BTC/USD", "book:ETH/USD", "book:BTC/USD:25"]
    assert handler.url(0) == Kraken.default_url == "wss://ws.kraken.com/v2"
    assert parse_spec("kraken:book:BTC/USD:7") == ("kraken", ["book:BTC/USD:7"])  # as given


def test_hyperliquid_specs_keep_case_colons_and_options() -> None:
    handler, topics = adapter_for("hyperliquid:trades:kPEPE,l2Book:BTC,nSigFigs=5,allMids")
    assert isinstance(handler, Hyperliquid) and isinstance(handler.heartbeat, JsonPing)
    assert topics == ["trades:kPEPE", "l2Book:BTC,nSigFigs=5", "allMids"]
    assert parse_spec("hyperliquid:trades:xyz:SP500,bbo:PURR/USDC") == (
        "hyperliquid", ["trades:xyz:SP500", "bbo:PURR/USDC"])
    assert handler.url(0) == Hyperliquid.default_url


@pytest.mark.parametrize("spec", ["btcusdt@trade", "bitstamp:btcusd", "binance:", "okx: , "])
def test_bad_specs_say_what_is_expected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"binance|topic"):
        adapter_for(spec)
