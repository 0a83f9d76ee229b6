"""The Binance adapters: fixtures, acks and errors, limits, and end to end over loopback.

Fixtures (``tests/fixtures/binance``) are the docs' samples, decoded by orjson and by
the typed Structs. End-to-end tests run ``BinanceSpot``/``BinanceUsdm`` through
``FeedClient`` and ``FeedPool`` against the simulator's Binance dialect (server PINGs,
combined envelopes, the USD-M split), on asyncio and uvloop.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from typing import Any

import msgspec
import orjson
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws._core import Deduplicator
from defi_ws.errors import ConfigError
from defi_ws.handler import Ack, DedupSpec, Notice
from defi_ws.heartbeat import NoPing, WsPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import BinanceDialect, Product
from defi_ws.testing.dialects import binance as sim_binance
from defi_ws.venues import binance, binance_types
from defi_ws.venues.binance import BinanceSpot, BinanceUsdm, UsdmEndpoint
from venues.support import IdLog, assert_prefixes_split, load_fixture, until, wire

FAST = {"reconnect": FixedDelay(0.05), "ack_timeout_s": 10.0}


def fixture(name: str) -> Any:
    return load_fixture("binance", name)



# ------------------------------------------------------------------ fixtures and types


def test_trade_fixtures_decode_with_orjson_and_structs() -> None:
    for sample in fixture("trade"):
        raw = wire(sample)
        assert orjson.loads(raw) == sample
        trade = msgspec.json.decode(raw, type=binance_types.Trade)
        assert (trade.s, trade.t, trade.p, trade.q, trade.m) == (
            "BNBBTC", 12345, "0.001", "100", True)
        assert trade.stream_seq() == ("bnbbtc@trade", 12345)
        assert binance.stream_of(sample) == "bnbbtc@trade"
        assert binance.dedup_key(memoryview(raw)) == ("bnbbtc@trade", 12345)
    with_ids = msgspec.json.decode(wire(fixture("trade")[1]), type=binance_types.Trade)
    assert (with_ids.b, with_ids.a) == (88, 50)


def test_agg_trade_depth_and_book_ticker_fixtures() -> None:
    spot, usdm = (msgspec.json.decode(wire(s), type=binance_types.AggTrade)
                  for s in fixture("agg_trade"))
    assert (spot.a, spot.f, spot.l, spot.M) == (12345, 100, 105, True)
    assert (usdm.s, usdm.a, usdm.M) == ("BTCUSDT", 5933014, None)
    assert binance.dedup_key(memoryview(wire(fixture("agg_trade")[1]))) == (
        "btcusdt@aggTrade", 5933014)

    spot_depth, usdm_depth = fixture("depth_update")
    update = msgspec.json.decode(wire(spot_depth), type=binance_types.DepthUpdate)
    assert (update.U, update.u, update.b, update.a, update.pu) == (
        157, 160, [("0.0024", "10")], [("0.0026", "100")], None)
    futures = msgspec.json.decode(wire(usdm_depth), type=binance_types.DepthUpdate)
    assert (futures.T, futures.pu) == (123456788, 149)
    assert binance.dedup_key(memoryview(wire(usdm_depth))) == ("depth", "BTCUSDT", 157, 160)
    assert binance.stream_of(spot_depth) is None  # @depth or @depth@100ms: can't tell

    for sample in fixture("book_ticker"):
        ticker = msgspec.json.decode(wire(sample), type=binance_types.BookTicker)
        assert (ticker.u, ticker.s, ticker.b, ticker.A) == (
            400900217, "BNBUSDT", "25.35190000", "40.66000000")
        assert binance.stream_of(sample) == "bnbusdt@bookTicker"
    assert msgspec.json.decode(wire(fixture("book_ticker")[1]),
                               type=binance_types.BookTicker).T == 1568014460891

    event = msgspec.json.decode(wire(fixture("trade")[0]), type=binance_types.Event)
    assert isinstance(event, binance_types.Trade)


def test_combined_envelopes_with_orjson_structs_and_helpers() -> None:
    samples = fixture("combined")
    decode = binance_types.event_decoder(combined=True)
    trade, agg, depth, ticker = (decode(memoryview(wire(s))) for s in samples)
    assert isinstance(trade, binance_types.Combined) and trade.stream == "bnbbtc@trade"
    assert isinstance(trade.data, binance_types.Trade) and trade.stream_seq() == (
        "bnbbtc@trade", 12345)
    assert isinstance(agg.data, binance_types.AggTrade)
    assert isinstance(depth.data, binance_types.DepthUpdate) and depth.stream_seq() is None
    assert ticker == samples[3]  # no tagged Struct for a spot book ticker: a dict
    ack = decode(memoryview(b'{"result":null,"id":1}'))
    assert ack == {"result": None, "id": 1}
    handler = BinanceSpot()
    for sample in samples:
        assert binance.event_of(sample) == sample["data"]
        assert handler.topic_of(sample) == sample["stream"]
    assert handler.sequence_of(samples[0]) == ("bnbbtc@trade", 12345)
    assert handler.sequence_of(samples[1]) == ("bnbbtc@aggTrade", 12345)
    assert handler.sequence_of(samples[2]) is None
    assert handler.sequence_of(trade) == ("bnbbtc@trade", 12345)  # typed, too
    assert binance.dedup_key(memoryview(wire(samples[2]))) == (
        "depth", "bnbbtc@depth@100ms", 157, 160)
    assert binance.dedup_key(memoryview(wire(samples[3]))) == (
        "bookTicker", "bnbusdt@bookTicker", 400900217)


def test_a_kline_is_hashed_not_keyed_by_its_nested_t() -> None:
    kline = {"e": "kline", "E": 1, "s": "BNBBTC", "k": {"t": 1672515780000, "x": False}}
    later = {**kline, "E": 2, "k": {"t": 1672515780000, "x": True}}
    dedup = Deduplicator(key_of=binance.dedup_key)
    trade = wire(fixture("trade")[0])
    assert [dedup.check(m) for m in (trade, wire(kline), wire(later), wire(later), trade)] == [
        True, True, True, False, False]


def test_control_prefixes_match_every_reply_and_no_data_message() -> None:
    prefixes = BinanceSpot.control_prefixes
    assert len(prefixes or ()) <= 8
    data = ("trade", "agg_trade", "depth_update", "book_ticker", "combined")
    assert_prefixes_split(prefixes, fixture("control").values(),
                          [s for name in data for s in fixture(name)])


# ------------------------------------------------------------------ the handler alone


def test_acks_errors_and_notices_map_to_requests() -> None:
    handler = BinanceSpot()
    first = handler.subscribe_messages(["btcusdt@trade", "ethusdt@trade"])[0]
    second = handler.subscribe_messages(["solusdt@trade"])[0]
    gone = handler.unsubscribe_messages(["btcusdt@trade"])[0]
    assert [m["id"] for m in (first, second, gone)] == [1, 2, 3]
    assert first == {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"],
                     "id": 1}
    assert handler.classify({"result": None, "id": 1}) == [
        Ack("btcusdt@trade"), Ack("ethusdt@trade")]
    assert handler.classify({"result": None, "id": 1}) == ()  # answered already
    assert handler.classify({"error": {"code": 2, "msg": "Invalid request: invalid stream"},
                             "id": 2}) == [
        Ack("solusdt@trade", ok=False, detail="code 2: Invalid request: invalid stream")]
    assert handler.classify({"code": 2, "msg": "nope", "id": 3}) == [
        Ack("btcusdt@trade", ok=False, detail="code 2: nope", unsubscribe=True)]
    controls = fixture("control")
    assert handler.classify(controls["error_docs"]) == ()  # no id: not traced
    assert handler.untraced_errors == 1
    assert handler.classify(controls["server_shutdown"]) == (Notice(None, "serverShutdown"),)
    assert handler.classify(fixture("trade")[0]) == ()


def test_malformed_streams_are_refused_here_not_sent() -> None:
    handler = BinanceSpot()
    message, alone = handler.subscribe_messages(
        ["BTCUSDT@trade", "btcusdt@trade", "btcusdt@x", "btc usdt@trade"])
    assert message["params"] == ["btcusdt@trade"]
    assert alone == {"method": "SUBSCRIBE", "params": ["btcusdt@x"], "id": message["id"] + 1}
    acks = handler.classify({"result": None, "id": message["id"]})
    assert [(a.topic, a.ok) for a in acks] == [
        ("BTCUSDT@trade", False), ("btc usdt@trade", False), ("btcusdt@trade", True)]
    assert "symbols are lowercase: 'btcusdt@trade'" in acks[0].detail
    assert handler.classify({"error": {"code": 2, "msg": "Invalid request: invalid stream"},
                             "id": alone["id"]})[0].topic == "btcusdt@x"
    assert not binance.stream_known("btcusdt@x") and binance.stream_known("!ticker@arr")
    for good in ("btcusdt@kline_1m", "!bookTicker", "!miniTicker@arr", "btcusdt@depth20@100ms",
                 "btcusdt_perpetual@continuousKline_1m", "btcusdt@markPrice@1s"):
        assert binance.stream_problem(good) is None and binance.stream_known(good), good
    [only_bad] = handler.subscribe_messages(["nope", "NOPE@trade"])
    assert only_bad == {"method": "LIST_SUBSCRIPTIONS", "id": only_bad["id"]}
    assert [a.ok for a in handler.classify({"result": [], "id": only_bad["id"]})] == [False] * 2
    lenient = BinanceSpot(validate_streams=False)
    assert lenient.subscribe_messages(["btcusdt@x"])[0]["params"] == ["btcusdt@x"]


def test_declared_limits_heartbeat_and_urls() -> None:
    spot, usdm = BinanceSpot(), BinanceUsdm()
    assert spot.url(0) == "wss://stream.binance.com:9443/stream"
    assert BinanceSpot(combined=False).url(0) == "wss://stream.binance.com:9443/ws"
    assert usdm.url(0) == "wss://fstream.binance.com/market/stream"
    assert BinanceUsdm("public", combined=False).url(0) == "wss://fstream.binance.com/public/ws"
    assert (spot.limits.topics_per_connection, spot.limits.max_connection_age_s) == (1024, 86400)
    assert spot.limits.connections_per_window == (300, 300.0)
    # 5 inbound/s (spot) and 10/s (USD-M), a PONG and a PING in the same second included
    for handler, venue_rate in ((spot, 5), (usdm, 10)):
        limits = handler.limits
        assert limits.messages_per_s is not None
        assert limits.burst + limits.messages_per_s + 2 <= venue_rate
    assert isinstance(spot.heartbeat, WsPing) and spot.max_topics_per_message == 200
    assert spot.dedup == binance.DEDUP and BinanceSpot(dedup=False).dedup is None
    fast = DedupSpec(id_field="t", topic_field="s")
    assert BinanceSpot(dedup=fast).dedup is fast
    with pytest.raises(ConfigError):
        BinanceSpot("http://example.com/ws")


def test_usdm_refuses_topics_of_the_other_endpoint() -> None:
    assert binance.usdm_endpoint("btcusdt@depth@100ms") is UsdmEndpoint.PUBLIC
    assert binance.usdm_endpoint("btcusdt@bookTicker") is UsdmEndpoint.PUBLIC
    assert binance.usdm_endpoint("btcusdt@markPrice@1s") is UsdmEndpoint.MARKET
    handler = BinanceUsdm(UsdmEndpoint.PUBLIC)
    [message] = handler.subscribe_messages(["btcusdt@depth@100ms", "btcusdt@aggTrade"])
    assert message["params"] == ["btcusdt@depth@100ms"]
    acks = handler.classify({"result": None, "id": message["id"]})
    assert [(a.topic, a.ok) for a in acks] == [
        ("btcusdt@aggTrade", False), ("btcusdt@depth@100ms", True)]
    assert "served on /market, not /public" in acks[0].detail


def test_private_url_carries_the_listen_key_but_no_repr_or_log_does() -> None:
    keys = iter(["key-1", "key-2"])
    handler = BinanceUsdm("private", listen_key=lambda: next(keys))
    assert handler.url(0) == "wss://fstream.binance.com/private/ws?listenKey=key-1"
    assert handler.url(1).endswith("listenKey=key-2")
    assert "key" not in repr(handler).replace("listenKey", "")
    with pytest.raises(ValueError):
        BinanceUsdm("private")
    with pytest.raises(ValueError):
        BinanceUsdm("public", listen_key=lambda: "k")


# ------------------------------------------------------------------ end to end


def spot_sim(**kwargs: Any) -> ExchangeSimulator:
    dialect_options = {k: kwargs.pop(k) for k in ("ping_interval_s", "pong_timeout_s",
                                                   "flat_errors") if k in kwargs}
    dialect = BinanceDialect(channels=sim_binance.ALL_CHANNELS, **dialect_options)
    return ExchangeSimulator(dialect=dialect, **kwargs)


class Trades(IdLog):
    """Trade and aggTrade ids per stream, as delivered."""

    def __init__(self) -> None:
        super().__init__()
        self.depth: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.messages: list[Any] = []

    def on_data(self, message: Any) -> None:
        self.messages.append(message)
        event = binance.event_of(message)
        stream = binance.stream_of(message) or ""
        if event.get("e") == "trade":
            self.add(stream, event["t"])
        elif event.get("e") == "aggTrade":
            self.add(stream, event["a"])
        elif event.get("e") == "depthUpdate":
            self.depth[stream].append((event["U"], event["u"]))

    def assert_exactly_once_in_order(self, contiguous: bool = True) -> None:
        super().assert_exactly_once_in_order(contiguous)
        for stream, spans in self.depth.items():
            assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans)), stream


STREAMS = ["btcusdt@trade", "ethusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker"]


@pytest.mark.parametrize("combined", [True, False])
async def test_client_subscribes_acks_and_receives_every_stream(combined: bool) -> None:
    trades = Trades()
    async with spot_sim(rate_per_s=50) as sim:
        handler = BinanceSpot(sim.url + ("stream" if combined else "ws"), on_data=trades.on_data)
        gaps: list[Gap] = []
        async with FeedClient(handler, topics=STREAMS, on_gap=gaps.append, **FAST) as client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(STREAMS)
            await until(lambda: len(trades.ids["btcusdt@trade"]) > 20
                        and len(trades.ids["ethusdt@aggTrade"]) > 20)
            sim.sequence_gap("btcusdt@trade", 3)
            await until(lambda: gaps != [])
            snap = client.snapshot()
        assert sim.limit_hits == 0
    first = trades.messages[0]
    assert ("stream" in first) is combined
    assert gaps[0].topic == "btcusdt@trade" and gaps[0].size == 3
    assert snap["unknown_acks"] == 0 and snap["decode_errors"] == 0
    kinds = {binance.event_of(m).get("e", "bookTicker") for m in trades.messages}
    assert kinds == {"trade", "aggTrade", "depthUpdate", "bookTicker"}


async def test_a_refused_subscription_is_reported_and_dropped() -> None:
    rejected: list[tuple[str, str]] = []
    trades = Trades()
    async with spot_sim(rate_per_s=50, reject_topics={"dogeusdt@trade"}) as sim:
        handler = BinanceSpot(sim.url + "stream", on_data=trades.on_data,
                              max_topics_per_message=2)
        client = FeedClient(handler, topics=["btcusdt@trade", "ethusdt@trade"],
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            client.subscribe(["dogeusdt@trade", "BTCUSDT@aggTrade", "ethusdt@nosuch"])
            await until(lambda: len(rejected) == 3)
            await until(lambda: len(trades.ids["ethusdt@trade"]) > 10)
            assert client.state.name == "LIVE"
            assert sorted(client.desired_topics) == ["btcusdt@trade", "ethusdt@trade"]
    assert rejected[0][0] == "BTCUSDT@aggTrade" and "lowercase" in rejected[0][1]
    # one bad stream refuses its whole request: the unknown type travelled alone
    assert rejected[1:] == [("dogeusdt@trade", "code 2: Invalid request: invalid stream"),
                            ("ethusdt@nosuch", "code 2: Invalid request: invalid stream")]
    assert sim.limit_hits == 0


async def test_server_pings_are_answered_and_a_silent_venue_times_out() -> None:
    # Scaled down: the venue PINGs every 1 s (Binance: 20 s) and wants the PONG within
    # 3 s (1 min); PONGs, PINGs and requests stay under its 5 messages/s even when a
    # stalled loop sends two PONGs at once.
    disconnects: list[Disconnect] = []
    async with spot_sim(rate_per_s=5, ping_interval_s=1.0, pong_timeout_s=3.0,
                        max_messages_per_s=5) as sim:
        handler = BinanceSpot(sim.url + "stream")
        client = FeedClient(handler, topics=["btcusdt@trade"],
                            heartbeat=WsPing(interval_s=1.0, timeout_s=2.0),
                            on_disconnected=disconnects.append, **FAST)
        async with client:
            await client.wait_live(20)
            dialect = sim.dialect_impl
            assert isinstance(dialect, BinanceDialect)
            await until(lambda: dialect.pongs_received >= 3)
            assert dialect.pong_timeouts == 0 and disconnects == []
            sim.silence()  # half-open: no data, no PINGs, no PONGs
            await until(lambda: disconnects != [])
            sim.silence(False)
            await client.wait_live(20)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT
    assert sim.limit_hits == 0  # PONGs and PINGs stayed within 5/s with the subscribes


async def test_a_client_keeps_the_inbound_rate_with_the_handlers_limits() -> None:
    streams = [f"s{i}usdt@trade" for i in range(12)]
    async with spot_sim(rate_per_s=1, ping_interval_s=1.0, max_messages_per_s=5,
                        max_topics_per_message=2) as sim:
        handler = BinanceSpot(sim.url + "stream", max_topics_per_message=2)
        async with FeedClient(handler, topics=streams, **FAST) as client:
            await client.wait_live(30)  # 6 SUBSCRIBEs at 2/s, burst 1
            assert len(client.confirmed_topics) == 12
        assert sim.limit_hits == 0, sim.stats()


async def test_pool_rotates_on_server_shutdown_without_gap_or_duplicate() -> None:
    trades = Trades()
    disconnects: list[Disconnect] = []
    async with spot_sim(rate_per_s=200, ping_interval_s=0.2) as sim:
        handler = BinanceSpot(sim.url + "stream", on_data=trades.on_data)
        pool = FeedPool(handler, topics=["btcusdt@trade", "btcusdt@aggTrade",
                                         "btcusdt@depth@100ms"],
                        rotation_overlap_s=0.1, on_disconnected=disconnects.append,
                        client_options={**FAST, "heartbeat": NoPing()})
        async with pool:
            await pool.wait_live(20)
            await until(lambda: len(trades.ids["btcusdt@trade"]) > 20)
            [conn] = sim.connections
            assert sim.announce_shutdown(conn, cut_after_s=5.0) == 1
            await until(lambda: pool.rotations == 1)
            await until(lambda: conn.id not in sim.subscribed_connections("btcusdt@trade"))
            before = len(trades.ids["btcusdt@trade"])
            await until(lambda: len(trades.ids["btcusdt@trade"]) > before + 100)
            snap = pool.snapshot()
    trades.assert_exactly_once_in_order()
    assert disconnects == [] and snap["gaps"] == 0 and snap["duplicates_dropped"] > 0
    assert sim.shutdown_cuts == 0  # rotated before the venue's cut


async def test_redundant_pool_over_combined_streams_delivers_each_message_once() -> None:
    trades = Trades()
    async with spot_sim(rate_per_s=200) as sim:
        handler = BinanceSpot(sim.url + "stream", on_data=trades.on_data)
        async with FeedPool(handler, topics=STREAMS, redundancy=2, client_options=FAST) as pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(s) == 2 for s in STREAMS))
            await until(lambda: len(trades.ids["btcusdt@trade"]) > 200)
            snap = pool.snapshot()
    trades.assert_exactly_once_in_order(contiguous=False)  # the first ids predate a replica
    tickers = [binance.event_of(m)["u"] for m in trades.messages
               if binance.stream_of(m) == "btcusdt@bookTicker"]
    assert len(tickers) == len(set(tickers))
    assert snap["duplicates_dropped"] > 200


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """The simulator enforces Binance's rules scaled down; the pool obeys the handler."""
    trades = Trades()
    # The handler's connection rate is one below the venue's: the venue counts a
    # connection when its upgrade completes, the pool when it starts it.
    # The 24 h cut scaled to 6 s, its serverShutdown notice 3 s ahead: time for the
    # pool's three make-before-break rotations, one at a time, on a loaded machine.
    limits = VenueLimits(topics_per_connection=8, messages_per_s=2.0, burst=1,
                         connections_per_window=(5, 2.0), max_connection_age_s=6.0)
    async with spot_sim(rate_per_s=20, ping_interval_s=1.0, max_messages_per_s=5,
                        max_topics_per_connection=8, max_topics_per_message=4,
                        max_connections_per_window=(6, 2.0), max_connection_age_s=6.0,
                        notice_before_s=3.0) as sim:
        handler = BinanceSpot(sim.url + "stream", on_data=trades.on_data,
                              max_topics_per_message=4, limits=limits)
        pool = FeedPool(handler, topics=[f"s{i}usdt@trade" for i in range(20)],
                        rotation_overlap_s=0.05, client_options=FAST, seed=5)
        async with pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            await until(lambda: pool.rotations >= 3, timeout_s=40)
            await pool.wait_live(30)
        assert sim.limit_hits == 0, sim.stats()
        assert sim.shutdown_notices >= 3 and sim.shutdown_cuts == 0
        dialect = sim.dialect_impl
        assert isinstance(dialect, BinanceDialect) and dialect.pong_timeouts == 0
    trades.assert_exactly_once_in_order()


async def test_usdm_public_and_market_handlers_each_get_their_streams() -> None:
    trades = Trades()
    rejected: list[str] = []
    dialect = BinanceDialect(product=Product.USDM, channels=sim_binance.ALL_CHANNELS)
    async with ExchangeSimulator(dialect=dialect, rate_per_s=50) as sim:
        public = BinanceUsdm("public", url=sim.url, on_data=trades.on_data)
        market = BinanceUsdm("market", url=sim.url, on_data=trades.on_data)
        options = {**FAST, "on_subscription_rejected": lambda t, d: rejected.append(t)}
        async with FeedClient(public, topics=["btcusdt@depth@100ms", "btcusdt@aggTrade"],
                              **options) as first, \
                FeedClient(market, topics=["ethusdt@aggTrade"], **options) as second:
            await first.wait_live(20)
            await second.wait_live(20)
            await until(lambda: len(trades.ids["ethusdt@aggTrade"]) > 10
                        and len(trades.depth["btcusdt@depth@100ms"]) > 10)
    assert rejected == ["btcusdt@aggTrade"]  # refused by the handler: never silently dead
    assert dialect.misrouted == 0
    update = next(binance.event_of(m) for m in trades.messages
                  if binance.event_of(m).get("e") == "depthUpdate")
    assert "pu" in update and "T" in update
    trades.assert_exactly_once_in_order()


async def test_no_listen_key_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="defi_ws")
    dialect = BinanceDialect(product=Product.USDM)
    async with ExchangeSimulator(dialect=dialect) as sim:
        handler = BinanceUsdm("private", url=sim.url, listen_key=lambda: "SECRET-LISTEN-KEY")
        async with FeedClient(handler, ack_timeout_s=None, heartbeat=NoPing()) as client:
            await client.wait_live(20)
            assert sim.connections[0].path.startswith("/private/ws?listenKey=")
    assert "SECRET-LISTEN-KEY" not in caplog.text
    assert "SECRET-LISTEN-KEY" not in repr(handler)
