"""The Hyperliquid adapter: fixtures, acks and errors, limits, and end to end over loopback.

Fixtures (``tests/fixtures/hyperliquid``) follow the docs' schemas (values from the
third-party capture of ``venues.md``), decoded by orjson and by the typed Structs.
End-to-end tests run ``Hyperliquid`` through ``FeedClient`` and ``FeedPool`` against
the simulator's Hyperliquid dialect (``subscriptionResponse`` acks, JSON ping, the idle
cut, per-IP limits, unannounced cuts, whole-book ``l2Book`` pushes), on asyncio and
uvloop.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
import orjson
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws.books import HyperliquidBook, ResyncReason
from defi_ws.handler import Ack
from defi_ws.heartbeat import JsonPing, NoPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import HyperliquidDialect
from defi_ws.testing.dialects import hyperliquid as sim_hl
from defi_ws.venues import hyperliquid, hyperliquid_types
from defi_ws.venues.hyperliquid import Hyperliquid
from venues.support import (
    Pushes,
    assert_prefixes_split,
    idle_cut_of_the_silent_client,
    load_fixture,
    ping_timeout_then_recovery,
    until,
    wire,
)

FAST = {"reconnect": FixedDelay(0.05), "ack_timeout_s": 10.0}
#: Scaled down: Hyperliquid cuts after 60 s without a message to the client.
PING = JsonPing({"method": "ping"}, b'{"channel":"pong"', interval_s=0.2, timeout_s=2.0)
DATA = ("trades", "l2book", "bbo", "all_mids")


def fixture(name: str) -> Any:
    return load_fixture("hyperliquid", name)


# ------------------------------------------------------------------ fixtures and types


def test_trade_fixture_decodes_with_orjson_and_structs() -> None:
    [sample] = fixture("trades")
    raw = wire(sample)
    assert orjson.loads(raw) == sample
    push = msgspec.json.decode(raw, type=hyperliquid_types.TradesPush)
    [trade] = push.data
    assert (trade.coin, trade.side, trade.px, trade.sz, trade.time, trade.tid) == (
        "BTC", "A", "69170.0", "0.00018", 1787195046105, 456615105517601)
    assert trade.users is not None and len(trade.users) == 2
    assert push.topic() == "trades:BTC"
    decode = hyperliquid_types.push_decoder(hyperliquid_types.Trade)
    assert decode(memoryview(raw)) == push
    book_sample = fixture("l2book")[0]
    assert decode(memoryview(wire(book_sample))) == book_sample  # another channel: a dict


def test_book_bbo_and_mids_fixtures_and_the_all_channel_decoder() -> None:
    decode = hyperliquid_types.push_decoder()
    [book_sample] = fixture("l2book")
    book = decode(memoryview(wire(book_sample)))
    assert isinstance(book, hyperliquid_types.BookPush) and book.topic() == "l2Book:BTC"
    bids, asks = book.data.levels
    assert bids[0] == hyperliquid_types.Level("69172.0", "1.21098", 5)
    assert asks[-1] == hyperliquid_types.Level("69174.0", "0.63175", 5)
    full, one_sided = (decode(memoryview(wire(s))) for s in fixture("bbo"))
    assert isinstance(full, hyperliquid_types.BboPush) and full.topic() == "bbo:BTC"
    assert one_sided.data.bbo[1] is None and one_sided.topic() == "bbo:@107"
    [mids_sample] = fixture("all_mids")
    mids = decode(memoryview(wire(mids_sample)))
    assert isinstance(mids, hyperliquid_types.AllMidsPush) and mids.topic() == "allMids"
    assert mids.data.mids["@107"] == "38.5115"
    for sample in fixture("control").values():  # replies stay dicts
        assert decode(memoryview(wire(sample))) == sample
    handler = Hyperliquid()
    for name in DATA:
        for sample in fixture(name):
            assert handler.topic_of(sample) == decode(memoryview(wire(sample))).topic()
    with pytest.raises(ValueError, match="no Hyperliquid push"):
        hyperliquid_types.push_decoder(dict)


def test_topics_and_subscriptions_round_trip() -> None:
    for topic, subscription in (
        ("trades:BTC", {"type": "trades", "coin": "BTC"}),
        ("allMids", {"type": "allMids"}),
        ("allMids:dex=xyz", {"type": "allMids", "dex": "xyz"}),
        ("l2Book:ETH,fast=true", {"type": "l2Book", "coin": "ETH", "fast": True}),
        ("l2Book:BTC,mantissa=5,nSigFigs=5",
         {"type": "l2Book", "coin": "BTC", "mantissa": 5, "nSigFigs": 5}),
        ("trades:xyz:SP500", {"type": "trades", "coin": "xyz:SP500"}),
        ("bbo:PURR/USDC", {"type": "bbo", "coin": "PURR/USDC"}),
        ("candle:UNI,interval=30m", {"type": "candle", "coin": "UNI", "interval": "30m"}),
    ):
        assert hyperliquid.to_subscription(topic) == subscription
        assert hyperliquid.to_topic(subscription) == topic
        assert sim_hl.topic_key(subscription) == topic  # the venue keys it the same way
    # field order and null fields do not matter
    assert hyperliquid.to_topic({"nSigFigs": 5, "coin": "BTC", "type": "l2Book",
                                 "mantissa": None}) == "l2Book:BTC,nSigFigs=5"
    assert hyperliquid.to_topic("trades:BTC") is None
    assert hyperliquid.to_topic({"coin": "BTC"}) is None


def test_control_prefixes_match_every_reply_and_no_push() -> None:
    prefixes = Hyperliquid.control_prefixes
    assert_prefixes_split(prefixes, fixture("control").values(),
                          [s for name in DATA for s in fixture(name)])
    pong = wire({"channel": "pong"})  # the heartbeat's, recognised before the router
    assert not pong.startswith(prefixes)
    assert pong.startswith(Hyperliquid.heartbeat.pong_pattern()[0])  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the handler alone


def test_requests_acks_and_errors() -> None:
    handler = Hyperliquid()
    controls = fixture("control")
    assert handler.subscribe_messages(["trades:SOL", "l2Book:BTC,fast=true"]) == [
        {"method": "subscribe", "subscription": {"type": "trades", "coin": "SOL"}},
        {"method": "subscribe", "subscription": {"type": "l2Book", "coin": "BTC",
                                                 "fast": True}}]
    assert handler.classify(controls["subscribed"]) == [Ack("trades:SOL")]
    assert handler.classify(controls["book_subscribed"]) == [Ack("l2Book:BTC,fast=true")]
    assert handler.classify(controls["unsubscribed"]) == [
        Ack("trades:SOL", unsubscribe=True)]
    # already where we want it: a confirmation, not a rejection
    assert handler.classify(controls["already_subscribed"]) == [
        Ack("candle:UNI,interval=30m")]
    assert handler.classify({"channel": "error", "data": 'Already unsubscribed: '
                             '{"type":"trades","coin":"SOL"}'}) == [
        Ack("trades:SOL", unsubscribe=True)]
    [refused] = handler.classify(controls["unknown_type"])
    assert (refused.topic, refused.ok, refused.unsubscribe) == ("liquidations:BTC", False,
                                                               False)
    assert refused.detail.startswith("Error parsing JSON")
    for name in ("parse_error", "too_many_channels", "too_many_messages"):
        assert handler.classify(controls[name]) == ()
    assert handler.untraced_errors == 3
    for name in DATA:
        for sample in fixture(name):
            assert handler.classify(sample) == ()


def test_an_ack_names_the_topic_as_the_user_wrote_it() -> None:
    handler = Hyperliquid()
    [request] = handler.subscribe_messages(["l2Book:BTC,nSigFigs=5,mantissa=2"])
    echo = {"type": "l2Book", "coin": "BTC", "mantissa": 2, "nSigFigs": 5}
    assert request["subscription"] == {"type": "l2Book", "coin": "BTC", "nSigFigs": 5,
                                       "mantissa": 2}
    ack = {"channel": "subscriptionResponse",
           "data": {"method": "subscribe", "subscription": echo}}
    assert handler.classify(ack) == [Ack("l2Book:BTC,nSigFigs=5,mantissa=2")]


def test_declared_limits_heartbeat_dedup_and_no_auth() -> None:
    handler = Hyperliquid()
    limits = handler.limits
    assert limits.problems() == []
    assert limits.topics_per_connection == 1000 and limits.max_connection_age_s is None
    assert limits.connections_per_window == (30, 60.0)
    assert limits.messages_per_s is not None
    assert 2 * (limits.burst + limits.messages_per_s * 60) < 2000  # two connections a minute
    assert handler.max_topics_per_message == 1
    heartbeat = handler.heartbeat
    assert isinstance(heartbeat, JsonPing) and heartbeat.message == {"method": "ping"}
    assert heartbeat.interval_s + heartbeat.timeout_s < 60  # the idle cut
    assert handler.dedup is not None and handler.dedup.hash_field == "data"
    assert handler.tracks_sequences is False
    assert handler.auth_messages() == ()
    assert handler.url(0) == Hyperliquid.default_url == "wss://api.hyperliquid.xyz/ws"
    assert Hyperliquid(testnet=True).url(0) == "wss://api.hyperliquid-testnet.xyz/ws"
    assert "SECRET" not in repr(Hyperliquid("wss://h.example/ws?token=SECRET"))
    assert Hyperliquid(dedup=False).dedup is None


def test_a_client_takes_the_handlers_heartbeat_and_outbound_rate() -> None:
    handler = Hyperliquid()
    config = FeedClient(handler)._config
    assert config.heartbeat is handler.heartbeat
    assert (config.rate_per_s, config.burst) == (hyperliquid.LIMITS.messages_per_s,
                                                 hyperliquid.LIMITS.burst)


# ------------------------------------------------------------------ end to end


def hl_sim(**kwargs: Any) -> ExchangeSimulator:
    names = ("idle_timeout_s", "max_subscriptions", "message_budget", "max_connections",
             "trade_backfill")
    options = {k: kwargs.pop(k) for k in names if k in kwargs}
    return ExchangeSimulator(dialect=HyperliquidDialect(**options), **kwargs)


def dialect_of(sim: ExchangeSimulator) -> HyperliquidDialect:
    dialect = sim.dialect_impl
    assert isinstance(dialect, HyperliquidDialect)
    return dialect


@cache
def event_numbers(topic: str) -> dict[int, int]:
    """``tid`` -> event number of a simulated topic (tids are hashes, not ordered)."""
    return {sim_hl.trade_id(topic, n): n for n in range(1, 30_001)}


def trade_numbers(message: Any) -> list[tuple[str, int]]:
    """``(topic, event number)`` of each trade of a ``trades`` push (from its tid)."""
    if message.get("channel") != "trades":
        return []
    return [(topic, event_numbers(topic)[trade["tid"]])
            for trade in message["data"] for topic in [f"trades:{trade['coin']}"]]


TOPICS = ["trades:BTC", "l2Book:ETH", "bbo:BTC", "allMids"]


def url(sim: ExchangeSimulator) -> str:
    return sim.url + "ws"


async def test_client_subscribes_gets_acks_every_channel_and_json_pongs() -> None:
    pushes = Pushes(trade_numbers)
    rejected: list[tuple[str, str]] = []
    async with hl_sim(rate_per_s=50, reject_topics={"trades:NOPE"}) as sim:
        handler = Hyperliquid(url(sim), on_data=pushes.on_data)
        client = FeedClient(handler, topics=[*TOPICS, "trades:NOPE"], heartbeat=PING,
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(TOPICS)
            await until(lambda: len(pushes.ids["trades:BTC"]) > 20
                        and client.snapshot()["pongs"] > 3)
            assert sorted(client.desired_topics) == sorted(TOPICS)  # the refused one dropped
            snap = client.snapshot()
    assert [t for t, _ in rejected] == ["trades:NOPE"]
    assert rejected[0][1].startswith("Error parsing JSON into valid websocket request")
    assert snap["rtt"]["count"] > 0 and snap["unknown_acks"] == 0
    assert snap["decode_errors"] == 0
    assert pushes.channels() == {"trades", "l2Book", "bbo", "allMids"}
    pushes.assert_exactly_once_in_order()
    assert sim.limit_hits == 0


async def test_typed_pushes_through_the_client() -> None:
    received: list[Any] = []
    async with hl_sim(rate_per_s=50) as sim:
        handler = Hyperliquid(url(sim), on_data=received.append,
                              decode=hyperliquid_types.push_decoder())
        async with FeedClient(handler, topics=TOPICS, heartbeat=PING, **FAST) as client:
            await client.wait_live(20)
            await until(lambda: {type(m) for m in received} == {
                hyperliquid_types.TradesPush, hyperliquid_types.BookPush,
                hyperliquid_types.BboPush, hyperliquid_types.AllMidsPush})
    assert {handler.topic_of(m) for m in received} == set(TOPICS)


async def test_pongs_withheld_are_a_ping_timeout() -> None:
    async with hl_sim(rate_per_s=20) as sim:
        disconnects = await ping_timeout_then_recovery(sim, Hyperliquid(url(sim)),
                                                       "trades:BTC", PING, **FAST)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT


async def test_the_ping_keeps_a_quiet_connection_past_the_idle_cut() -> None:
    async with hl_sim(rate_per_s=0, idle_timeout_s=1.5) as sim:
        lost = await idle_cut_of_the_silent_client(
            Hyperliquid(url(sim)), Hyperliquid(url(sim)), ("trades:BTC", "trades:SOL"),
            PING, **FAST)
    assert lost.reason is DisconnectReason.PEER_CLOSE
    assert lost.close_code == sim_hl.IDLE_CLOSE[0]
    assert dialect_of(sim).idle_cuts >= 1


async def test_a_book_stays_in_sync_and_a_broken_push_is_a_counted_resync() -> None:
    book = HyperliquidBook("ETH")
    async with hl_sim(rate_per_s=30) as sim:
        dialect = dialect_of(sim)
        handler = Hyperliquid(url(sim), on_data=book.apply)
        async with FeedClient(handler, topics=["l2Book:ETH", "trades:ETH"], heartbeat=PING,
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: book.is_live and book.counters.snapshots > 5)
            bids, asks = book.bids(), book.asks()
            assert len(bids) == len(asks) == 20 and bids[0].price < asks[0].price
            dialect.cross_next("l2Book:ETH")
            await until(lambda: book.counters.resyncs_total == 1)
            await until(lambda: book.is_live)  # the next push is a whole book again
            dialect.rewind_next("l2Book:ETH")
            await until(lambda: book.counters.stale_dropped == 1)
            assert book.is_live
            before = book.counters.snapshots
            [conn] = sim.connections
            sim.drop(conn)  # an unannounced cut: the client resubscribes, the book resumes
            await until(lambda: client.snapshot()["reconnects"] >= 1)
            await until(lambda: book.is_live and book.counters.snapshots > before + 5)
    assert book.counters.resyncs == {ResyncReason.CROSSED_BOOK: 1}
    assert book.counters.ignored > 0  # the trades pushes of the same connection


async def test_trades_backfill_follows_the_ack() -> None:
    first, late = Pushes(trade_numbers), Pushes(trade_numbers)
    async with hl_sim(rate_per_s=50, trade_backfill=5) as sim:
        async with FeedClient(Hyperliquid(url(sim), on_data=first.on_data),
                              topics=["trades:BTC"], heartbeat=PING, **FAST) as client:
            await client.wait_live(20)
            await until(lambda: len(first.ids["trades:BTC"]) > 10)
            async with FeedClient(Hyperliquid(url(sim), on_data=late.on_data),
                                  topics=["trades:BTC"], heartbeat=PING, **FAST) as other:
                await other.wait_live(20)
                await until(lambda: len(late.pushes) > 3)
    assert len(late.pushes[0]["data"]) == 5  # the recent trades, one push
    late.assert_exactly_once_in_order()


async def test_redundant_pool_delivers_each_push_once_through_an_unannounced_cut() -> None:
    pushes = Pushes(trade_numbers)
    disconnects: list[Disconnect] = []
    async with hl_sim(rate_per_s=100) as sim:
        handler = Hyperliquid(url(sim), on_data=pushes.on_data)
        pool = FeedPool(handler, topics=TOPICS, redundancy=2,
                        on_disconnected=disconnects.append,
                        client_options={**FAST, "heartbeat": PING})
        async with pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            await until(lambda: len(pushes.ids["trades:BTC"]) > 50)
            first = sim.connections[0]
            assert sim.drop(first)  # Hyperliquid's cuts come without a notice
            await until(lambda: disconnects != [])
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            before = len(pushes.ids["trades:BTC"])
            await until(lambda: len(pushes.ids["trades:BTC"]) > before + 100)
            snap = pool.snapshot()
    pushes.assert_exactly_once_in_order()  # contiguous: the twin covered the cut
    books = [p["data"]["time"] for p in pushes.pushes if p["channel"] == "l2Book"]
    assert books == sorted(books)
    assert snap["duplicates_dropped"] > 100 and snap["gaps"] == 0


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """Hyperliquid's per-IP caps scaled down: subscriptions, messages, connections."""
    pushes = Pushes(trade_numbers)
    # Per IP: 12 subscriptions (1000), 60 messages in any 2 s (2000 a minute), 4 open
    # connections (100, or 10) and 3 new ones a second (30 a minute). Per connection
    # the pool is told 4 topics and 3 messages/s with a burst of 3: one connection
    # sends at most 3 + 3 * 2 = 9 messages in any 2 s, pings included, and its
    # replacement after a cut as many again: three of each, 54. (The pool's connection
    # rate is one below the venue's: the venue counts a connection when its upgrade
    # completes, the pool when it starts it.)
    limits = VenueLimits(topics_per_connection=4, messages_per_s=3.0, burst=3,
                         connections_per_window=(2, 1.0), max_connection_age_s=None)
    async with hl_sim(rate_per_s=20, max_subscriptions=12, message_budget=(60, 2.0),
                      max_connections=4, max_topics_per_connection=4,
                      max_connections_per_window=(3, 1.0)) as sim:
        handler = Hyperliquid(url(sim), on_data=pushes.on_data, limits=limits)
        topics = [f"trades:C{i}" for i in range(10)]
        heartbeat = JsonPing({"method": "ping"}, b'{"channel":"pong"', interval_s=2.0,
                             timeout_s=2.0)
        pool = FeedPool(handler, topics=topics, client_options={**FAST, "heartbeat": heartbeat})
        async with pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            await until(lambda: all(len(pushes.ids[t]) > 3 for t in topics))
            sim.drop_all()  # every connection at once, unannounced
            await until(lambda: sim.connections_accepted >= 6, timeout_s=30)
            await pool.wait_live(30)
            pool.unsubscribe(topics[:2])
            pool.subscribe(["trades:D1", "trades:D2"])
            await pool.wait_live(30)
            await until(lambda: len(pushes.ids["trades:D2"]) > 5)
            assert sum(sim.subscribers(t) for t in [*topics[2:], "trades:D1",
                                                     "trades:D2"]) == 10
        assert sim.limit_hits == 0, sim.stats()
    pushes.assert_exactly_once_in_order(contiguous=False)  # a cut without a twin: gaps


async def test_the_dialect_enforces_its_limits() -> None:
    """What a client over the caps gets (the pool above never sees it)."""
    async with hl_sim(rate_per_s=0, max_subscriptions=2, message_budget=(6, 30.0),
                      max_connections=1) as sim:
        rejected: list[tuple[str, str]] = []
        handler = Hyperliquid(url(sim))
        client = FeedClient(handler, topics=["trades:A", "trades:B", "trades:C"],
                            heartbeat=NoPing(), on_subscription_rejected=lambda t, d:
                            rejected.append((t, d)), **{**FAST, "ack_timeout_s": 1.0})
        async with client:
            await until(lambda: dialect_of(sim).subscription_refusals >= 1)
            await until(lambda: dialect_of(sim).budget_violations >= 1
                        or dialect_of(sim).connection_refusals >= 1)
        assert handler.untraced_errors >= 1  # "Cannot subscribe to more than 2 channels."
        assert rejected == []  # never misattributed to a topic
        assert sim.limit_hits >= 2
