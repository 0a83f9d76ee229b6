"""The Bybit v5 adapter: fixtures, acks and refusals, limits, and end to end over loopback.

Fixtures (``tests/fixtures/bybit``) are the docs' samples, decoded by orjson and by the
typed Structs. End-to-end tests run ``Bybit`` through ``FeedClient`` and ``FeedPool``
against the simulator's Bybit dialect (per-request and per-topic acks, JSON pings, the
idle cut, request limits, auth, books with ``u`` gaps and restarts), on asyncio and
uvloop; the dialect's wire shapes and limits are checked by raw picows clients.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import Any

import msgspec
import orjson
import picows
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws.books import BybitBook, ResyncAction, ResyncReason
from defi_ws.errors import FatalDisconnect
from defi_ws.handler import Ack, AuthReply
from defi_ws.heartbeat import JsonPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import BybitDialect
from defi_ws.testing.dialects import bybit as sim_bybit
from defi_ws.venues import bybit, bybit_types, parse_spec
from defi_ws.venues.bybit import (
    Bybit,
    BybitCredentials,
    BybitLinear,
    BybitOption,
    BybitProduct,
    heartbeat_for,
)
from tests.testing.test_simulator_limits import Client
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
CREDS = BybitCredentials("api-key-1", "SECRET-XYZ")


def fixture(name: str) -> Any:
    return load_fixture("bybit", name)


def ping(product: BybitProduct = BybitProduct.SPOT) -> JsonPing:
    """The product's heartbeat, scaled down (Bybit: 20 s under a 10 min idle cut)."""
    return heartbeat_for(product, interval_s=0.2, timeout_s=2.0)


# ------------------------------------------------------------------ fixtures and types


def test_trade_fixtures_decode_with_orjson_and_structs() -> None:
    decode = bybit_types.push_decoder(list[bybit_types.Trade])
    for sample in fixture("trades"):
        raw = wire(sample)
        assert orjson.loads(raw) == sample
        push = msgspec.json.decode(raw, type=bybit_types.Push[list[bybit_types.Trade]])
        [trade] = push.data
        assert (push.topic, push.type, push.ts) == ("publicTrade.BTCUSDT", "snapshot",
                                                    1672304486868)
        assert (trade.T, trade.s, trade.S, trade.v, trade.p, trade.L, trade.BT) == (
            1672304486865, "BTCUSDT", "Buy", "0.001", "16578.50", "PlusTick", False)
        assert trade.i == "20f43950-d8dd-5b31-9112-a178eb6023af"
        assert decode(memoryview(raw)) == push
        assert Bybit().topic_of(push) == Bybit().topic_of(sample) == "publicTrade.BTCUSDT"
    assert msgspec.json.decode(wire(fixture("trades")[1]),
                               type=bybit_types.Push[list[bybit_types.Trade]]).data[0].seq == (
        1783284617)
    ack = fixture("control")["subscribe_spot"]
    assert decode(memoryview(wire(ack))) == ack  # not a push: a dict


def test_book_and_ticker_fixtures() -> None:
    snapshot, delta = fixture("orderbook")
    typed = bybit_types.push_decoder(bybit_types.BookData)
    first = typed(memoryview(wire(snapshot)))
    assert isinstance(first, bybit_types.Push) and first.type == "snapshot"
    assert (first.data.s, first.data.u, first.data.seq) == ("BTCUSDT", 18521288, 7961638724)
    assert first.data.b[0] == ("16493.50", "0.006")
    second = typed(memoryview(wire(delta)))
    assert (second.type, second.cts, second.data.u) == ("delta", 1687940967464, 177400507)
    assert second.data.a[0] == ("30248.70", "0") and len(second.data.b) == 5
    book = BybitBook("BTCUSDT", depth=50)
    assert book.apply(orjson.loads(wire(snapshot))).outcome.name == "APPLIED"
    assert book.best_bid() is not None

    linear, spot = fixture("tickers")
    ticker = msgspec.json.decode(wire(linear), type=bybit_types.Push[bybit_types.Ticker])
    assert (ticker.cs, ticker.data.bid1Price, ticker.data.ask1Price, ticker.data.fundingRate) == (
        24987956059, "17215.50", "17216.00", "-0.000212")
    spot_ticker = msgspec.json.decode(wire(spot), type=bybit_types.Push[bybit_types.Ticker])
    assert (spot_ticker.data.lastPrice, spot_ticker.data.bid1Price) == ("16363.78", None)


def test_control_prefixes_match_every_reply_and_no_push() -> None:
    prefixes = Bybit.control_prefixes
    assert_prefixes_split(prefixes, fixture("control").values(),
                          [s for name in ("trades", "orderbook", "tickers") for s in fixture(name)])


def test_each_products_pong_is_recognised_and_is_no_push() -> None:
    pongs = fixture("pongs")
    for product, name in ((BybitProduct.SPOT, "spot"), (BybitProduct.LINEAR, "linear"),
                          (BybitProduct.INVERSE, "linear"), (BybitProduct.OPTION, "option"),
                          (BybitProduct.SPREAD, "option")):
        pattern = heartbeat_for(product).pong_pattern()
        assert wire(pongs[name]).startswith(pattern[0]) and pattern[1] is False
        for sample in (*fixture("trades"), *fixture("orderbook"), *fixture("tickers")):
            assert not wire(sample).startswith(pattern[0])
    private = heartbeat_for(BybitProduct.PRIVATE)
    sent = {**pongs["private"], "req_id": "ping"}  # our ping's req_id, echoed first
    assert wire(sent).startswith(private.pong_pattern()[0])
    assert orjson.loads(private.ping_payload()) == {"req_id": "ping", "op": "ping"}


# ------------------------------------------------------------------ the handler alone


def test_acks_answer_requests_and_refusals_name_their_topics() -> None:
    handler = Bybit()
    [first] = handler.subscribe_messages(["publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"])
    assert first == {"req_id": "1", "op": "subscribe",
                     "args": ["publicTrade.BTCUSDT", "orderbook.50.BTCUSDT"]}
    handler.subscribe_messages(["tickers.NOPE", "tickers.BTCUSDT"])
    handler.subscribe_messages(["a.X", "b.Y"])
    spot_ack = {**fixture("control")["subscribe_spot"], "req_id": "1"}
    assert handler.classify(spot_ack) == [Ack("publicTrade.BTCUSDT"),
                                          Ack("orderbook.50.BTCUSDT")]
    assert handler.classify(spot_ack) == ()  # answered once
    refusal = {**fixture("control")["subscribe_refused"], "req_id": "2",
               "ret_msg": "error:handler not found,topic:tickers.NOPE"}
    # Only the named topic is refused; its neighbour waits (ack timeout, then replay).
    assert handler.classify(refusal) == [
        Ack("tickers.NOPE", ok=False, detail="error:handler not found,topic:tickers.NOPE")]
    vague = {**refusal, "req_id": "3", "ret_msg": "error:args size >10"}
    assert [(a.topic, a.ok) for a in handler.classify(vague)] == [("a.X", False), ("b.Y", False)]
    assert handler.classify(fixture("control")["subscribe_refused"]) == ()
    assert handler.untraced_errors == 1
    assert handler.classify(fixture("control")["auth_ok"]) == [AuthReply(True, "")]
    assert handler.classify({"success": False, "ret_msg": "error:request expired",
                             "op": "auth"}) == [AuthReply(False, "error:request expired")]
    assert handler.classify(fixture("pongs")["spot"]) == ()
    for sample in fixture("trades"):
        assert handler.classify(sample) == ()
    [gone] = handler.unsubscribe_messages(["publicTrade.BTCUSDT"])
    linear_ack = {**fixture("control")["subscribe_linear"], "op": "unsubscribe",
                  "req_id": gone["req_id"]}
    assert handler.classify(linear_ack) == [Ack("publicTrade.BTCUSDT", unsubscribe=True)]


def test_a_token_match_never_refuses_a_topic_named_only_as_a_prefix() -> None:
    handler = Bybit()
    handler.subscribe_messages(["publicTrade.BTCUSDT", "publicTrade.BTCUSDTX"])
    refusal = {"success": False, "ret_msg": "error:handler not found,topic:publicTrade.BTCUSDTX",
               "req_id": "1", "op": "subscribe"}
    assert [a.topic for a in handler.classify(refusal)] == ["publicTrade.BTCUSDTX"]


def test_option_command_responses_ack_per_topic() -> None:
    handler = BybitOption()
    handler.subscribe_messages(["orderbook.100.BTC-6JAN23-18000-C", "tickers.NOPE"])
    assert handler.classify(fixture("control")["subscribe_option"]) == [
        Ack("orderbook.100.BTC-6JAN23-18000-C")]
    refused = {"success": False, "conn_id": "x", "ret_msg": "error:handler not found",
               "data": {"failTopics": ["tickers.NOPE"], "successTopics": []},
               "type": "COMMAND_RESP"}
    assert handler.classify(refused) == [
        Ack("tickers.NOPE", ok=False, detail="error:handler not found")]
    handler.unsubscribe_messages(["orderbook.100.BTC-6JAN23-18000-C"])
    gone = {"success": True, "conn_id": "x", "type": "COMMAND_RESP",
            "data": {"failTopics": [], "successTopics": ["orderbook.100.BTC-6JAN23-18000-C"]}}
    assert handler.classify(gone) == [Ack("orderbook.100.BTC-6JAN23-18000-C", unsubscribe=True)]


def test_topics_round_trip_and_specs_upper_case_symbols() -> None:
    handler = Bybit()
    for sample in (*fixture("trades"), *fixture("orderbook"), *fixture("tickers")):
        [message] = handler.subscribe_messages([sample["topic"]])
        assert message["args"] == [handler.topic_of(sample)]
    assert handler.topic_of({"success": True}) is None and handler.topic_of([1]) is None
    assert parse_spec("bybit:publicTrade.btcusdt, orderbook.50.ethusdt,order") == (
        "bybit", ["publicTrade.BTCUSDT", "orderbook.50.ETHUSDT", "order"])
    assert parse_spec("bybit-option:tickers.btc-6jan23-18000-c") == (
        "bybit-option", ["tickers.BTC-6JAN23-18000-C"])


def test_requests_keep_the_args_limits() -> None:
    spot = Bybit()
    assert spot.max_topics_per_message == 10
    assert BybitLinear().max_topics_per_message == 200
    long_topics = [f"orderbook.1000.{'X' * 180}{i:04d}" for i in range(200)]
    messages = BybitLinear().subscribe_messages(long_topics)
    assert len(messages) > 1
    assert [t for m in messages for t in m["args"]] == long_topics
    for message in messages:
        assert bybit.args_chars(message["args"]) <= bybit.MAX_ARGS_CHARS
        assert len(orjson.dumps(message["args"])) <= sim_bybit.MAX_ARGS_CHARS
    assert len({m["req_id"] for m in messages}) == len(messages)


def test_declared_limits_heartbeat_urls_and_dedup() -> None:
    handler = Bybit()
    assert handler.url(0) == Bybit.default_url == "wss://stream.bybit.com/v5/public/spot"
    assert BybitLinear().url(0) == BybitLinear.default_url.replace("spot", "linear")
    assert BybitOption.default_url.endswith("/v5/public/option")
    assert Bybit("inverse").url(0).endswith("/v5/public/inverse")
    assert Bybit(url="ws://127.0.0.1:9/v5/public/spot").url(0).startswith("ws://127")
    limits = handler.limits
    assert limits.connections_per_window == (500, 300.0) and limits.max_connection_age_s is None
    assert limits.problems() == [] and BybitOption().limits.topics_per_connection == 2000
    heartbeat = handler.heartbeat
    assert isinstance(heartbeat, JsonPing)
    assert orjson.loads(heartbeat.ping_payload()) == {"op": "ping"}
    assert heartbeat.interval_s == 20.0 and heartbeat.interval_s + heartbeat.timeout_s < 600
    assert handler.tracks_sequences is False and handler.dedup is bybit.DEDUP
    assert Bybit(dedup=False).dedup is None
    raw = wire(fixture("trades")[0])
    assert bybit.dedup_key(memoryview(raw)) == bybit.dedup_key(memoryview(bytes(raw)))
    with pytest.raises(ValueError):
        Bybit(max_topics_per_message=0)
    with pytest.raises(ValueError):
        Bybit("private")  # no credentials


def test_auth_signature_and_hidden_credentials() -> None:
    handler = Bybit("private", credentials=CREDS, clock=lambda: 1662350390.0)
    [auth] = handler.auth_messages()
    expected = hmac.new(b"SECRET-XYZ", b"GET/realtime1662350400000", hashlib.sha256).hexdigest()
    assert auth == {"req_id": "auth", "op": "auth",
                    "args": ["api-key-1", 1662350400000, expected]}
    assert expected == sim_bybit.auth_sign("SECRET-XYZ", 1662350400000)  # the venue agrees
    for text in (repr(handler), repr(CREDS), str(CREDS)):
        assert "SECRET" not in text and "api-key" not in text
    assert handler.url(0) == "wss://stream.bybit.com/v5/private"
    assert Bybit().auth_messages() == ()


def test_a_client_takes_the_handlers_heartbeat_and_outbound_rate() -> None:
    handler = BybitLinear()
    config = FeedClient(handler)._config
    assert config.heartbeat is handler.heartbeat
    assert (config.rate_per_s, config.burst) == (handler.limits.messages_per_s,
                                                 handler.limits.burst)


# ------------------------------------------------------------------ end to end


def bybit_sim(product: str = "spot", **kwargs: Any) -> ExchangeSimulator:
    options = {k: kwargs.pop(k) for k in ("idle_timeout_s", "enforce_limits") if k in kwargs}
    dialect = BybitDialect(product=product, channels=sim_bybit.ALL_CHANNELS,
                           credentials=sim_bybit.BybitCredentials("api-key-1", "SECRET-XYZ"),
                           **options)
    return ExchangeSimulator(dialect=dialect, **kwargs)


def trade_seqs(message: Any) -> list[tuple[str, int]]:
    """``(topic, seq)`` of each trade of a ``publicTrade`` push."""
    topic = message.get("topic", "")
    if not topic.startswith("publicTrade."):
        return []
    return [(topic, trade["seq"]) for trade in message["data"]]


TOPICS = ["publicTrade.BTCUSDT", "orderbook.1.BTCUSDT", "orderbook.50.ETHUSDT",
          "tickers.BTCUSDT"]


@pytest.mark.parametrize("product", ["spot", "linear"])
async def test_client_subscribes_gets_acks_pongs_and_every_channel(product: str) -> None:
    pushes = Pushes(trade_seqs)
    async with bybit_sim(product, rate_per_s=50) as sim:
        handler = Bybit(product, url=sim.url + f"v5/public/{product}", on_data=pushes.on_data)
        client = FeedClient(handler, topics=TOPICS, heartbeat=ping(BybitProduct(product)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(TOPICS)
            await until(lambda: len(pushes.ids["publicTrade.BTCUSDT"]) > 20
                        and client.snapshot()["pongs"] > 3)
            snap = client.snapshot()
    assert snap["rtt"]["count"] > 0 and snap["unknown_acks"] == 0
    assert snap["decode_errors"] == 0 and snap["disconnects"] == {}
    assert {p["topic"] for p in pushes.pushes} == set(TOPICS)
    books = [p for p in pushes.pushes if p["topic"] == "orderbook.50.ETHUSDT"]
    assert books[0]["type"] == "snapshot" and books[1]["type"] == "delta"
    assert {p["type"] for p in pushes.pushes if p["topic"] == "orderbook.1.BTCUSDT"} == {
        "snapshot"}
    pushes.assert_exactly_once_in_order()


async def test_a_refused_topic_is_reported_and_dropped_and_its_neighbours_replayed() -> None:
    """Spot refuses the request whole: the named topic is dropped, the rest is replayed."""
    pushes = Pushes(trade_seqs)
    rejected: list[tuple[str, str]] = []
    disconnects: list[Disconnect] = []
    async with bybit_sim(rate_per_s=50) as sim:
        handler = Bybit(url=sim.url + "v5/public/spot", on_data=pushes.on_data)
        client = FeedClient(handler, topics=["publicTrade.BTCUSDT", "tickers.NOPE-"],
                            heartbeat=ping(), on_disconnected=disconnects.append,
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            reconnect=FixedDelay(0.05), ack_timeout_s=2.0)
        async with client:
            await until(lambda: client.confirmed_topics == ("publicTrade.BTCUSDT",))
            await until(lambda: len(pushes.ids["publicTrade.BTCUSDT"]) > 5)
    assert [t for t, _ in rejected] == ["tickers.NOPE-"]
    assert "handler not found" in rejected[0][1]
    # The refused request's neighbour got no ack: its timeout reconnected once.
    assert [d.reason for d in disconnects] == [DisconnectReason.SUBSCRIBE_REJECTED]
    pushes.assert_exactly_once_in_order(contiguous=False)


async def test_option_refuses_per_topic_without_a_reconnect() -> None:
    rejected: list[str] = []
    async with bybit_sim("option", rate_per_s=20, reject_topics={"tickers.BTC-1JAN30-1-C"}) \
            as sim:
        handler = BybitOption(url=sim.url + "v5/public/option")
        client = FeedClient(handler, topics=["orderbook.25.BTC-6JAN23-18000-C",
                                             "tickers.BTC-1JAN30-1-C"],
                            heartbeat=ping(BybitProduct.OPTION),
                            on_subscription_rejected=lambda t, d: rejected.append(t), **FAST)
        async with client:
            await client.wait_live(20)
            await until(lambda: client.snapshot()["pongs"] > 2)
            assert client.confirmed_topics == ("orderbook.25.BTC-6JAN23-18000-C",)
            client.unsubscribe(["orderbook.25.BTC-6JAN23-18000-C"])
            await until(lambda: sim.subscribers("orderbook.25.BTC-6JAN23-18000-C") == 0)
            await until(lambda: not handler._requests)  # every request answered
            snap = client.snapshot()
    assert rejected == ["tickers.BTC-1JAN30-1-C"]
    assert snap["disconnects"] == {} and snap["unknown_acks"] == 0


async def test_pongs_withheld_are_a_ping_timeout() -> None:
    async with bybit_sim("linear", rate_per_s=20) as sim:
        handler = BybitLinear(url=sim.url + "v5/public/linear")
        disconnects = await ping_timeout_then_recovery(
            sim, handler, "publicTrade.BTCUSDT", ping(BybitProduct.LINEAR), **FAST)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT


async def test_the_json_ping_keeps_a_quiet_connection_past_the_idle_cut() -> None:
    async with bybit_sim(rate_per_s=0, idle_timeout_s=1.5) as sim:
        pinging, silent = (Bybit(url=sim.url + "v5/public/spot") for _ in range(2))
        lost = await idle_cut_of_the_silent_client(
            pinging, silent, ("publicTrade.BTCUSDT", "publicTrade.SOLUSDT"), ping(), **FAST)
    assert lost.reason is DisconnectReason.PEER_CLOSE
    assert lost.close_code == sim_bybit.IDLE_CLOSE[0]
    assert sim.dialect_impl.stats()["idle_cuts"] >= 1


async def test_auth_then_private_topic_and_no_secret_in_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="defi_ws")
    pushes = Pushes(trade_seqs)
    async with bybit_sim(rate_per_s=20) as sim:
        handler = Bybit("private", url=sim.url + "v5/private", credentials=CREDS,
                        on_data=pushes.on_data)
        async with FeedClient(handler, topics=["order"], heartbeat=ping(BybitProduct.PRIVATE),
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: len(pushes.pushes) > 5 and client.snapshot()["pongs"] > 2)
        assert sim.logins_ok == 1
    assert pushes.pushes[0]["topic"] == "order"
    for secret in ("SECRET-XYZ", "api-key-1", sim_bybit.auth_sign("SECRET-XYZ", 0)[:16]):
        assert secret not in caplog.text


async def test_a_refused_auth_is_fatal() -> None:
    async with bybit_sim() as sim:
        wrong = BybitCredentials("api-key-1", "WRONG")
        handler = Bybit("private", url=sim.url + "v5/private", credentials=wrong)
        client = FeedClient(handler, topics=["order"], heartbeat=ping(BybitProduct.PRIVATE),
                            **FAST)
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(20)
    assert info.value.disconnect.reason is DisconnectReason.AUTH_FAILED
    assert "signature" in info.value.disconnect.detail
    assert "WRONG" not in str(info.value)
    assert sim.logins_failed == 1 and sim.subscribers("order") == 0


async def test_redundant_pool_delivers_each_push_once_through_a_drop() -> None:
    pushes = Pushes(trade_seqs)
    async with bybit_sim("linear", rate_per_s=200) as sim:
        handler = BybitLinear(url=sim.url + "v5/public/linear", on_data=pushes.on_data)
        async with FeedPool(handler, topics=TOPICS, redundancy=2,
                            client_options={**FAST,
                                            "heartbeat": ping(BybitProduct.LINEAR)}) as pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            await until(lambda: len(pushes.ids["publicTrade.BTCUSDT"]) > 100)
            sim.drop(sim.connections[0])  # the other connection carries on: no gap
            before = len(pushes.ids["publicTrade.BTCUSDT"])
            await until(lambda: len(pushes.ids["publicTrade.BTCUSDT"]) > before + 100)
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            snap = pool.snapshot()
    pushes.assert_exactly_once_in_order()
    assert snap["duplicates_dropped"] > 100
    deltas = [p["data"]["u"] for p in pushes.pushes
              if p["topic"] == "orderbook.50.ETHUSDT" and p["type"] == "delta"]
    assert deltas == sorted(set(deltas))


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """Spot's rules, scaled down: 10 args per request, topics, connection and message rates."""
    pushes = Pushes(trade_seqs)
    limits = VenueLimits(topics_per_connection=12, messages_per_s=5.0, burst=3,
                         connections_per_window=(2, 1.0), max_connection_age_s=None)
    async with bybit_sim(rate_per_s=10, max_topics_per_connection=12,
                         max_connections_per_window=(3, 1.0), max_messages_per_s=10) as sim:
        handler = Bybit(url=sim.url + "v5/public/spot", on_data=pushes.on_data, limits=limits)
        topics = [f"publicTrade.C{i}USDT" for i in range(30)]
        slow_ping = heartbeat_for(BybitProduct.SPOT, interval_s=1.0, timeout_s=2.0)
        pool = FeedPool(handler, topics=topics,
                        client_options={**FAST, "heartbeat": slow_ping})
        async with pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            pool.unsubscribe(topics[:2])
            pool.subscribe(["publicTrade.D1USDT", "publicTrade.D2USDT"])
            await pool.wait_live(30)
            await until(lambda: len(pushes.ids["publicTrade.D2USDT"]) > 5)
        assert sim.limit_hits == 0, sim.stats()
    pushes.assert_exactly_once_in_order()


async def test_the_dialect_refuses_a_spot_request_over_10_args() -> None:
    rejected: list[str] = []
    async with bybit_sim() as sim:
        handler = Bybit(url=sim.url + "v5/public/spot", max_topics_per_message=11)
        topics = [f"publicTrade.C{i}USDT" for i in range(11)]
        client = FeedClient(handler, topics=topics, heartbeat=ping(),
                            on_subscription_rejected=lambda t, d: rejected.append(d), **FAST)
        async with client:
            await until(lambda: len(rejected) == 11)
        assert sim.limit_hits == 1 and sim.dialect_impl.stats()["limit_violations"] == 1
    assert "args size" in rejected[0]


async def test_a_book_stays_in_sync_and_resyncs_after_a_gap_and_a_restart() -> None:
    topic = "orderbook.50.BTCUSDT"
    book = BybitBook("BTCUSDT", depth=50)
    actions: list[ResyncAction] = []

    def on_data(message: Any) -> None:
        result = book.apply(message)
        if result.action is not None:
            actions.append(result.action)

    async with bybit_sim("linear", rate_per_s=100) as sim:
        handler = BybitLinear(url=sim.url + "v5/public/linear", on_data=on_data)
        async with FeedClient(handler, topics=[topic], heartbeat=ping(BybitProduct.LINEAR),
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: book.is_live and book.counters.applied > 20)
            assert book.best_bid() is not None and book.best_ask() is not None
            sim.sequence_gap(topic, 3)
            await until(lambda: actions == [ResyncAction.RESUBSCRIBE])
            assert book.counters.resyncs == {ResyncReason.SEQUENCE_GAP: 1}
            client.unsubscribe([topic])
            await until(lambda: sim.subscribers(topic) == 0)
            client.subscribe([topic])
            await until(lambda: book.is_live and book.counters.snapshots == 2)
            applied = book.counters.applied
            await until(lambda: book.counters.applied > applied + 20)
            dialect = sim.dialect_impl
            assert isinstance(dialect, BybitDialect)
            sim.set_rate(0)
            assert dialect.restart_service(topic) == 1
            await until(lambda: book.counters.snapshots == 3)
            assert book.is_live and book.last_update_id == 1  # the service-restart snapshot
            applied = book.counters.applied
            sim.set_rate(100)
            await until(lambda: book.counters.applied > applied + 20)
            assert book.last_update_id == 1 + book.counters.applied - applied  # u counts on
    assert book.counters.resyncs == {ResyncReason.SEQUENCE_GAP: 1}
    assert actions == [ResyncAction.RESUBSCRIBE]


def test_the_dialect_refuses_other_products_paths_and_knows_its_shapes() -> None:
    dialect = BybitDialect(product="linear")
    assert dialect.upgrade_status("/v5/public/linear") is None
    assert dialect.upgrade_status("/v5/private?max_active_time=1m") is None
    assert dialect.upgrade_status("/") is None
    assert dialect.upgrade_status("/v5/public/spot") == 404
    with pytest.raises(ValueError):
        BybitDialect(channels=["kline"])
    assert ExchangeSimulator(dialect="bybit").dialect.value == "bybit"


# ------------------------------------------------------------------ the dialect on the wire


async def raw(sim: ExchangeSimulator, path: str) -> Client:
    _, client = await picows.ws_connect(Client, sim.url + path)
    assert isinstance(client, Client)
    return client


async def test_the_dialect_speaks_each_products_replies_and_limits() -> None:
    async with bybit_sim() as sim:
        spot = await raw(sim, "v5/public/spot")
        spot.send({"req_id": "7", "op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
        spot.send({"op": "ping"})
        spot.send({"req_id": "8", "op": "subscribe",
                   "args": [f"tickers.C{i}USDT" for i in range(11)]})
        spot.send({"req_id": "9", "op": "subscribe", "args": ["tickers.NOPE-", "tickers.ETHUSDT"]})
        spot.send("not json")
        spot.send({"req_id": "10", "op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]})
        await spot.wait(lambda: len(spot.messages()) == 6)
        ack, pong, too_many, unknown, malformed, gone = spot.messages()
        cid = sim_bybit.conn_id(sim.connections[0].id)
        assert ack == {"success": True, "ret_msg": "subscribe", "conn_id": cid, "req_id": "7",
                       "op": "subscribe"}
        assert pong == {"success": True, "ret_msg": "pong", "conn_id": cid, "op": "ping"}
        assert spot.texts()[1].startswith(heartbeat_for(BybitProduct.SPOT).pong_pattern()[0])
        assert too_many["success"] is False and "args size" in too_many["ret_msg"]
        assert unknown == {"success": False, "conn_id": cid, "req_id": "9", "op": "subscribe",
                           "ret_msg": "error:handler not found,topic:tickers.NOPE-"}
        assert malformed["success"] is False and gone["op"] == "unsubscribe"
        assert sim.subscribers("tickers.ETHUSDT") == 0  # refused whole
        assert sim.limit_hits == 1
        await spot.close()


async def test_the_dialect_refuses_args_over_21000_characters_and_answers_linear_pings() -> None:
    async with bybit_sim("linear") as sim:
        client = await raw(sim, "v5/public/linear")
        client.send({"req_id": "1", "op": "subscribe",
                     "args": [f"publicTrade.{'X' * 99}{i:04d}" for i in range(200)]})
        client.send({"req_id": "p", "op": "ping"})
        await client.wait(lambda: len(client.messages()) == 2)
        refusal, pong = client.messages()
        assert refusal["success"] is False and "21000" in refusal["ret_msg"]
        assert pong["ret_msg"] == "pong" and pong["req_id"] == "p"
        assert sim.limit_hits == 1
        await client.close()


async def test_the_dialects_private_endpoint_needs_auth() -> None:
    async with bybit_sim() as sim:
        client = await raw(sim, "v5/private?max_active_time=1m")
        good = bybit.auth_message(CREDS, int(time.time() * 1000) + 5000)
        client.send({"req_id": "1", "op": "subscribe", "args": ["order"]})
        client.send(bybit.auth_message(BybitCredentials("api-key-1", "WRONG"),
                                       int(time.time() * 1000) + 5000))
        client.send(bybit.auth_message(CREDS, int(time.time() * 1000) - 1000))
        client.send(good)
        client.send({"req_id": "2", "op": "subscribe", "args": ["order"]})
        client.send({"req_id": "ping", "op": "ping"})
        await client.wait(lambda: len(client.messages()) == 6)
        early, wrong, expired, ok, subscribed, pong = client.messages()
        assert early["success"] is False and "not authorized" in early["ret_msg"]
        assert "signature" in wrong["ret_msg"] and "expired" in expired["ret_msg"]
        assert ok["success"] is True and ok["op"] == "auth"
        assert subscribed["success"] is True and sim.subscribers("order") == 1
        assert pong["op"] == "pong" and pong["req_id"] == "ping"
        assert client.texts()[5].startswith(heartbeat_for(BybitProduct.PRIVATE).pong_pattern()[0])
        assert (sim.logins_ok, sim.logins_failed) == (1, 2)
        await client.close()
