"""The Kraken spot v2 adapter: fixtures, acks, limits, books, and end to end over loopback.

Fixtures (``tests/fixtures/kraken``) are the docs' samples, decoded by orjson and by the
typed Structs. End-to-end tests run ``Kraken`` through ``FeedClient`` and ``FeedPool``
against the simulator's Kraken dialect (per-symbol acks, JSON ping, heartbeat channel,
idle cut, books with CRC32 checksums, unannounced drops), on asyncio and uvloop.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import picows
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws.books import KrakenBook, ResyncAction, ResyncReason
from defi_ws.handler import Ack, VenueHeartbeat
from defi_ws.heartbeat import JsonPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import KrakenDialect
from defi_ws.testing.dialects import kraken as sim_kraken
from defi_ws.venues import kraken, kraken_types
from defi_ws.venues.kraken import Kraken
from tests.testing.test_simulator_limits import Client, closed_by_server
from venues.support import (
    FIXTURES,
    Pushes,
    assert_prefixes_split,
    idle_cut_of_the_silent_client,
    load_fixture,
    ping_timeout_then_recovery,
    until,
    wire,
)

FAST = {"reconnect": FixedDelay(0.05), "ack_timeout_s": 10.0}
#: Scaled down: Kraken's ping every 15 s, answered within 10 s.
PING = JsonPing({"method": "ping"}, pong_prefix=b'{"method":"pong"', interval_s=0.2,
                timeout_s=2.0)


def fixture(name: str) -> Any:
    return load_fixture("kraken", name)


# ------------------------------------------------------------------ fixtures and types


def test_trade_and_ticker_fixtures_decode_with_orjson_and_structs() -> None:
    [sample] = fixture("trade")
    raw = wire(sample)
    assert orjson.loads(raw) == sample
    push = msgspec.json.decode(raw, type=kraken_types.Push[kraken_types.Trade])
    [trade] = push.data
    assert (push.channel, push.type) == ("trade", "update")
    assert (trade.symbol, trade.side, trade.price, trade.qty, trade.ord_type, trade.trade_id,
            trade.timestamp) == ("MATIC/USD", "sell", Decimal("0.5117"), Decimal("40.0"),
                                 "market", 4665906, "2023-09-25T07:49:37.708706Z")
    decode = kraken_types.push_decoder(kraken_types.Trade)
    assert decode(memoryview(raw)) == push
    ack = fixture("control")["subscribe_ok"]
    assert decode(memoryview(wire(ack))) == ack  # not a trade push: a dict
    [sample] = fixture("ticker")
    ticker = msgspec.json.decode(wire(sample), type=kraken_types.Push[kraken_types.Ticker])
    [top] = ticker.data
    assert (top.bid, top.bid_qty, top.ask, top.ask_qty) == (
        Decimal("0.10025"), Decimal("740.0"), Decimal("0.10036"), Decimal("1361.44813783"))
    assert top.change_pct == Decimal("-0.17") and ticker.type == "snapshot"


def test_book_fixtures_and_the_documented_checksum_decode_exactly() -> None:
    update, snapshot = fixture("book")
    for sample in (update, snapshot):
        assert orjson.loads(wire(sample)) == sample
    book = msgspec.json.decode(wire(update), type=kraken_types.Push[kraken_types.Book])
    [entry] = book.data
    assert entry.bids == [kraken_types.BookLevel(Decimal("0.5657"), Decimal("1098.3947558"))]
    assert entry.asks == [] and entry.checksum == 2114181697
    # The documented BTC/USD snapshot: exact decoding keeps 0.10000000's digits, so a
    # KrakenBook verifies the documented checksum with no configured precision.
    raw = (FIXTURES / "books" / "kraken_checksum.json").read_bytes()
    document = kraken_types.exact_decoder()(memoryview(raw))
    message = document["message"]
    assert message["data"][0]["bids"][0]["qty"] == Decimal("0.10000000")
    kept = KrakenBook("BTC/USD")
    assert kept.apply(message).outcome.value == "applied"
    assert kept.counters.checksums_verified == 1 and kept.is_live
    typed = msgspec.json.decode(json.dumps(json.loads(raw)["message"]).encode(),
                                type=kraken_types.Push[kraken_types.Book])
    assert typed.data[0].checksum == document["checksum"] == 3310070434


def test_control_prefixes_match_every_reply_and_no_push() -> None:
    keepalive = fixture("keepalive")  # the heartbeat channel is a VenueHeartbeat: control
    beats = [s for s in keepalive if s.get("channel") == "heartbeat"]
    assert beats
    assert_prefixes_split(
        Kraken.control_prefixes, [*fixture("control").values(), *beats],
        [s for name in ("trade", "ticker", "book") for s in fixture(name)]
        + [s for s in keepalive if s not in beats])
    assert wire(fixture("control")["pong"]).startswith(Kraken.heartbeat.pong_pattern()[0])


# ------------------------------------------------------------------ the handler alone


def test_topics_round_trip_and_malformed_ones_are_named() -> None:
    for topic, params in (("trade:BTC/USD", ("trade", "BTC/USD", None)),
                          ("book:ETH/USD:25", ("book", "ETH/USD", 25)),
                          ("ticker:MATIC/GBP", ("ticker", "MATIC/GBP", None))):
        assert kraken.to_params(topic) == params and kraken.to_topic(*params) == topic
        assert kraken.topic_problem(topic) is None
    assert kraken.to_topic("book", "BTC/USD", 10) == "book:BTC/USD"
    assert kraken.normalise_topic(" Book:eth/usd:10 ") == "book:ETH/USD"
    for bad in ("trade", "trade:BTCUSD", "book:BTC/USD:7", "trade:BTC/USD:10", "book:X/Y:z"):
        assert kraken.topic_problem(bad) is not None, bad
        assert kraken.normalise_topic(bad) == bad


def test_requests_carry_one_channel_and_depth_each() -> None:
    handler = Kraken()
    messages = handler.subscribe_messages(
        ["trade:BTC/USD", "book:BTC/USD", "trade:ETH/USD", "book:ETH/USD:25", "book:X:7"])
    assert messages == [
        {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD", "ETH/USD"],
                                           "snapshot": False}, "req_id": 1},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]},
         "req_id": 2},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["ETH/USD"],
                                           "depth": 25}, "req_id": 3},
        {"method": "subscribe", "params": {"channel": "book", "symbol": ["X"], "depth": 7},
         "req_id": 4},  # malformed: alone, so its refusal takes nothing else
    ]
    assert Kraken(trade_snapshot=True).subscribe_messages(["trade:A/B"])[0]["params"][
        "snapshot"] is True
    assert handler.unsubscribe_messages(["trade:BTC/USD"]) == [
        {"method": "unsubscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]},
         "req_id": 5}]


def reply(req_id: int, symbol: str, channel: str = "trade", ok: bool = True,
          method: str = "subscribe", **result: Any) -> dict[str, Any]:
    if ok:
        return {"method": method, "req_id": req_id, "success": True,
                "result": {"channel": channel, "symbol": symbol, **result}}
    return {"error": f"nope {symbol}", "method": method, "req_id": req_id, "success": False,
            "symbol": symbol}


def test_per_symbol_acks_rejections_and_stray_replies() -> None:
    handler = Kraken()
    handler.subscribe_messages(["trade:BTC/USD", "trade:XDG/USD", "trade:ETH/USD"])
    handler.subscribe_messages(["book:ETH/USD:25"])
    assert handler.classify(reply(1, "ETH/USD")) == [Ack("trade:ETH/USD")]
    assert handler.classify(reply(1, "XDG/USD", ok=False)) == [
        Ack("trade:XDG/USD", ok=False, detail="nope XDG/USD")]
    assert handler.classify(reply(1, "BTC/USD")) == [Ack("trade:BTC/USD")]
    assert handler.classify(reply(1, "BTC/USD")) == [Ack("trade:BTC/USD")]  # not ours now
    assert handler.classify(reply(2, "ETH/USD", "book", depth=25)) == [Ack("book:ETH/USD:25")]
    book = {"channel": "book", "type": "update", "data": [
        {"symbol": "ETH/USD", "bids": [], "asks": [], "checksum": 1}]}
    assert handler.topic_of(book) == "book:ETH/USD:25"  # the depth subscribed
    typed = msgspec.json.decode(wire(book), type=kraken_types.Push[kraken_types.Book])
    assert handler.topic_of(typed) == "book:ETH/USD:25"
    for sample in fixture("keepalive"):
        heartbeat = sample.get("channel") == "heartbeat"
        assert handler.classify(sample) == (
            (VenueHeartbeat("kraken heartbeat"),) if heartbeat else ()), sample
        assert handler.topic_of(sample) is None
    # A refusal of a whole request (no symbol) refuses every topic not yet answered.
    handler.subscribe_messages(["ticker:A/B", "ticker:C/D"])
    assert handler.classify(reply(3, "A/B", "ticker")) == [Ack("ticker:A/B")]
    assert handler.classify(reply(3, "A/B", "ticker")) == [Ack("ticker:A/B")]  # twice: stray
    whole = {"error": "Exceeded maximum symbols", "method": "subscribe", "req_id": 3,
             "success": False}
    assert handler.classify(whole) == [
        Ack("ticker:C/D", ok=False, detail="Exceeded maximum symbols")]
    controls = fixture("control")
    assert handler.classify(controls["subscribe_error"]) == ()  # req_id 7: not ours
    assert handler.untraced_errors == 1
    assert handler.classify(controls["rate_error"]) == () and handler.rate_errors == 1
    [gone] = handler.unsubscribe_messages(["book:ETH/USD:25"])
    assert handler.classify(reply(gone["req_id"], "ETH/USD", "book", method="unsubscribe",
                                  depth=25)) == [Ack("book:ETH/USD:25", unsubscribe=True)]
    assert handler.classify(fixture("trade")[0]) == ()


def test_declared_limits_heartbeat_dedup_and_repr() -> None:
    handler = Kraken(url="wss://ws.kraken.com/v2?token=SECRET-TOKEN")
    assert handler.limits.problems() == [] and handler.limits is kraken.LIMITS
    assert handler.limits.max_connection_age_s is None
    assert handler.max_topics_per_message <= handler.limits.topics_per_connection
    assert isinstance(handler.heartbeat, JsonPing)
    assert handler.heartbeat.ping_payload() == b'{"method":"ping"}'
    assert handler.dedup is not None and handler.dedup.hash_field == "data"
    assert handler.tracks_sequences is False and handler.auth_messages() == ()
    assert "SECRET" not in repr(handler) and repr(handler).startswith("Kraken(")
    config = FeedClient(handler)._config
    assert config.heartbeat is handler.heartbeat
    assert (config.rate_per_s, config.burst) == (kraken.LIMITS.messages_per_s,
                                                 kraken.LIMITS.burst)
    with pytest.raises(ValueError):
        Kraken(max_topics_per_message=0)


# ------------------------------------------------------------------ end to end


def trade_ids(message: Any) -> list[tuple[str, int]]:
    """``(topic, trade_id)`` of each trade of a ``trade`` update."""
    if message.get("channel") != "trade" or message.get("type") != "update":
        return []
    return [("trade:" + trade["symbol"], trade["trade_id"]) for trade in message["data"]]


def kraken_sim(**kwargs: Any) -> ExchangeSimulator:
    options = {k: kwargs.pop(k) for k in ("heartbeat_interval_s", "idle_timeout_s")
               if k in kwargs}
    return ExchangeSimulator(dialect=KrakenDialect(**options), **kwargs)


TOPICS = ["trade:BTC/USD", "ticker:BTC/USD", "book:ETH/USD"]


async def test_client_acks_per_symbol_reports_a_refusal_and_pongs() -> None:
    pushes = Pushes(trade_ids)
    rejected: list[tuple[str, str]] = []
    async with kraken_sim(rate_per_s=50, reject_topics={"trade:XDG/USD"}) as sim:
        handler = Kraken(sim.url + "v2", on_data=pushes.on_data)
        client = FeedClient(handler, topics=[*TOPICS, "trade:XDG/USD"], heartbeat=PING,
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(TOPICS)
            assert "trade:XDG/USD" not in client.desired_topics  # dropped
            await until(lambda: len(pushes.ids["trade:BTC/USD"]) > 20
                        and client.snapshot()["pongs"] > 3)
            snap = client.snapshot()
    assert rejected == [("trade:XDG/USD", "Currency pair not supported XDG/USD")]
    assert snap["rtt"]["count"] > 0 and snap["unknown_acks"] == 0
    assert snap["decode_errors"] == 0 and handler.untraced_errors == 0
    assert pushes.channels() >= {"status", "trade", "ticker", "book"}
    assert pushes.pushes[0]["channel"] == "status"  # sent on connect
    books = [m for m in pushes.pushes if m.get("channel") == "book"]
    assert books[0]["type"] == "snapshot"  # after the ack, then updates
    pushes.assert_exactly_once_in_order()


async def test_the_ping_keeps_a_quiet_connection_past_the_idle_cut() -> None:
    async with kraken_sim(rate_per_s=0, idle_timeout_s=1.5,
                          heartbeat_interval_s=0.2) as sim:
        pinging = Kraken(sim.url + "v2")
        silent = Kraken(sim.url + "v2")
        lost = await idle_cut_of_the_silent_client(
            pinging, silent, ("trade:BTC/USD", "trade:SOL/USD"), PING, **FAST)
        assert sim.dialect_impl.stats()["idle_cuts"] >= 1
    assert lost.reason is DisconnectReason.PEER_CLOSE
    assert lost.close_code == sim_kraken.IDLE_CLOSE[0]


async def test_venue_heartbeats_are_not_data_and_a_dataless_feed_goes_stale() -> None:
    # Kraken's {"channel":"heartbeat"} keeps arriving on a quiet subscribed connection:
    # it never reaches on_data and never keeps the data stale clock fresh.
    got: list[Any] = []
    lost: list[Disconnect] = []
    async with kraken_sim(rate_per_s=0, heartbeat_interval_s=0.1) as sim:
        handler = Kraken(sim.url + "v2", on_data=got.append)
        async with FeedClient(handler, topics=["trade:BTC/USD"], heartbeat=PING,
                              stale_after_s=1.5, on_disconnected=lost.append,
                              **FAST) as client:
            await until(lambda: bool(lost), timeout_s=30)
            control = client.health.counter("control_messages")
    assert lost[0].reason is DisconnectReason.STALE, lost
    assert control >= 5  # the ack and the heartbeats of 1.5 s (one every 0.1 s)
    assert all(message.get("channel") != "heartbeat" for message in got), got


async def test_pongs_withheld_are_a_ping_timeout() -> None:
    async with kraken_sim(rate_per_s=20) as sim:
        disconnects = await ping_timeout_then_recovery(sim, Kraken(sim.url + "v2"),
                                                       "trade:BTC/USD", PING, **FAST)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT


class Books:
    """A KrakenBook per symbol fed from ``on_data``; counts the resubscribes asked for."""

    def __init__(self, *symbols: str) -> None:
        self.books = {s: KrakenBook(s) for s in symbols}
        self.asked: list[str] = []

    def on_data(self, message: Any) -> None:
        if message.get("channel") != "book":
            return
        for book in self.books.values():
            result = book.apply(message)
            if result.action is ResyncAction.RESUBSCRIBE:
                self.asked.append(book.symbol)


async def resubscribe(client: FeedClient, sim: ExchangeSimulator, topic: str) -> None:
    """What a user does when a Kraken book asks for RESUBSCRIBE."""
    client.unsubscribe(topic)
    await until(lambda: sim.subscribers(topic) == 0)  # the unsubscribe has been processed
    client.subscribe(topic)


async def test_book_stays_in_sync_and_resyncs_after_a_bad_checksum_or_a_lost_update() -> None:
    books = Books("BTC/USD")
    book = books.books["BTC/USD"]
    async with kraken_sim(rate_per_s=30) as sim:
        dialect = sim.dialect_impl
        assert isinstance(dialect, KrakenDialect)
        handler = Kraken(sim.url + "v2", on_data=books.on_data,
                         decode=kraken_types.exact_decoder())
        async with FeedClient(handler, topics=["book:BTC/USD"], heartbeat=PING,
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: book.is_live and book.counters.applied > 20)
            assert book.counters.resyncs_total == 0
            dialect.corrupt_checksums("BTC/USD")
            await until(lambda: books.asked == ["BTC/USD"])
            assert book.last_resync is not None
            assert book.last_resync.reason is ResyncReason.CHECKSUM_MISMATCH
            await resubscribe(client, sim, "book:BTC/USD")
            await until(lambda: book.is_live and book.counters.snapshots == 2)
            sim.sequence_gap("book:BTC/USD")  # an update applied by the venue, never sent
            await until(lambda: len(books.asked) == 2)
            await resubscribe(client, sim, "book:BTC/USD")
            await until(lambda: book.is_live and book.counters.snapshots == 3)
            applied = book.counters.applied
            await until(lambda: book.counters.applied > applied + 10)
            assert client.snapshot()["unknown_acks"] == 0
        assert dialect.updates_withheld == 1 and dialect.checksums_corrupted == 1
    assert book.counters.resyncs == {ResyncReason.CHECKSUM_MISMATCH: 2}
    assert book.counters.checksums_verified >= 35 and len(book.bids()) == 10


async def test_redundant_pool_delivers_each_push_once_across_an_unannounced_drop() -> None:
    pushes = Pushes(trade_ids)
    books = Books("ETH/USD")
    disconnects: list[Disconnect] = []

    def on_data(message: Any) -> None:
        pushes.on_data(message)
        books.on_data(message)

    async with kraken_sim(rate_per_s=200) as sim:
        handler = Kraken(sim.url + "v2", on_data=on_data, decode=kraken_types.exact_decoder())
        async with FeedPool(handler, topics=TOPICS, redundancy=2,
                            on_disconnected=disconnects.append,
                            client_options={**FAST, "heartbeat": PING}) as pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            await until(lambda: len(pushes.ids["trade:BTC/USD"]) > 100)
            # Kraken (Cloudflare) drops a connection without notice: the other one of
            # the pair carries on, nothing is lost, nothing is delivered twice.
            assert sim.drop(sim.connections[0])
            await until(lambda: disconnects != [])
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            before = len(pushes.ids["trade:BTC/USD"])
            await until(lambda: len(pushes.ids["trade:BTC/USD"]) > before + 100)
            snap = pool.snapshot()
    pushes.assert_exactly_once_in_order()
    assert snap["duplicates_dropped"] > 200
    assert books.asked == [] and books.books["ETH/USD"].is_live


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """Kraken's (unconfirmed) limits scaled down: symbols per request, topics per
    connection, message rate with pings counted, connection rate; then a drop of every
    connection and a change of topics."""
    pushes = Pushes(trade_ids)
    # The connection rate is one below the venue's: the venue counts a connection
    # when its upgrade completes, the pool when it starts it.
    limits = VenueLimits(topics_per_connection=6, messages_per_s=1.0, burst=4,
                         connections_per_window=(2, 1.0), max_connection_age_s=None)
    async with kraken_sim(rate_per_s=20, max_topics_per_connection=6,
                          max_topics_per_message=3, max_messages_per_s=2,
                          messages_burst=5, max_connections_per_window=(3, 1.0)) as sim:
        handler = Kraken(sim.url + "v2", on_data=pushes.on_data, max_topics_per_message=3,
                         limits=limits)
        topics = [f"trade:C{i}/USD" for i in range(15)]
        pool = FeedPool(handler, topics=topics, client_options={**FAST, "heartbeat": JsonPing(
            {"method": "ping"}, pong_prefix=b'{"method":"pong"', interval_s=2.0,
            timeout_s=1.0)})
        async with pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            sim.drop_all()
            await until(lambda: sum(c.snapshot()["reconnects"] for c in pool.clients()) >= 3,
                        timeout_s=30)
            await pool.wait_live(30)
            pool.unsubscribe(topics[:2])
            pool.subscribe(["trade:D1/USD", "trade:D2/USD"])
            await pool.wait_live(30)
            await until(lambda: len(pushes.ids["trade:D2/USD"]) > 5)
        assert sim.limit_hits == 0, sim.stats()
    assert handler.rate_errors == 0 and handler.untraced_errors == 0
    pushes.assert_exactly_once_in_order(contiguous=False)



# ------------------------------------------------------------------ the dialect's rules


async def test_the_dialect_refuses_what_kraken_refuses_and_enforces_its_limits() -> None:
    """Raw requests: sorted-key replies, per-symbol and whole-request refusals, the
    limits (symbols per request, topics per connection, message rate)."""
    async with kraken_sim(max_topics_per_message=2, max_topics_per_connection=2,
                          max_messages_per_s=20, heartbeat_interval_s=None) as sim:
        _, client = await picows.ws_connect(Client, sim.url + "v2")
        assert isinstance(client, Client)
        await client.wait(lambda: len(client.messages()) == 1)
        assert client.messages()[0]["channel"] == "status"

        def subscribe(req_id: int, channel: str, *symbols: str, **params: Any) -> None:
            client.send({"method": "subscribe", "req_id": req_id,
                         "params": {"channel": channel, "symbol": list(symbols), **params}})

        subscribe(1, "book", "BTC/USD", "btc-usd")
        subscribe(2, "trade", "A/B", "C/D", "E/F")
        subscribe(3, "book", "ETH/USD", depth=7)
        subscribe(4, "book", "BTC/USD")
        subscribe(5, "trade", "A/B", "C/D", snapshot=False)
        client.send({"method": "unsubscribe", "req_id": 6,
                     "params": {"channel": "ticker", "symbol": ["A/B"]}})
        client.send({"method": "ping", "req_id": 7})
        await client.wait(lambda: len(client.messages()) == 11)
        _status, ack, snapshot, *rest, pong = client.messages()
        assert client.texts()[1].startswith(b'{"method":"subscribe","req_id":1,"result":')
        assert ack["result"] == {"channel": "book", "depth": 10, "snapshot": True,
                                 "symbol": "BTC/USD"}
        assert snapshot["type"] == "snapshot" and snapshot["data"][0]["checksum"] == (
            sim.dialect_impl.book_checksum("BTC/USD"))
        assert [(m.get("req_id"), m.get("success"), m.get("symbol"), m.get("error"))
                for m in rest] == [
            (1, False, "btc-usd", "Currency pair not supported btc-usd"),
            (2, False, None, "Exceeded maximum symbols in one request"),
            (3, False, None, "Invalid depth 7"),
            (4, False, "BTC/USD", "Already subscribed"),
            (5, True, None, None),
            (5, False, "C/D", "Exceeded maximum subscriptions"),
            (6, False, "A/B", "Subscription Not Found")]
        assert (pong["method"], pong["req_id"]) == ("pong", 7)
        assert (sim.oversized_subscribes, sim.topic_limit_rejections) == (1, 1)
        for _ in range(25):
            client.send({"method": "ping"})
        assert await closed_by_server(client) == (1008, "Too many requests")
        assert {"Error": "Exceeded msg rate"} in client.messages()
        assert sim.rate_violations == 1
