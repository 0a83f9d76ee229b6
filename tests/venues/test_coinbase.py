"""The Coinbase Advanced Trade adapter: fixtures, acks, sequences, JWT, limits, end to end.

Fixtures (``tests/fixtures/coinbase``) are the docs' samples, decoded by orjson and by
the typed Structs. End-to-end tests run ``Coinbase`` through ``FeedClient`` and
``FeedPool`` against the simulator's Coinbase dialect (``subscriptions`` replies,
errors, per-connection ``sequence_num``, the ``heartbeats`` channel, level2 snapshot
and updates, the idle cut and subscribe deadline), on asyncio and uvloop, with
intervals scaled down.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from decimal import Decimal
from typing import Any

import msgspec
import orjson
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws.books import CoinbaseBook, ResyncAction, ResyncReason
from defi_ws.handler import Ack, VenueHeartbeat
from defi_ws.heartbeat import WsPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.sequence import Gap
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import CoinbaseDialect, Dialect
from defi_ws.testing.dialects import coinbase as sim_coinbase
from defi_ws.venues import coinbase, coinbase_types
from defi_ws.venues.coinbase import Coinbase
from venues.support import (
    Pushes,
    assert_prefixes_split,
    idle_cut_of_the_silent_client,
    load_fixture,
    until,
    wire,
)

FAST = {"reconnect": FixedDelay(0.05), "ack_timeout_s": 10.0}
DATA_FIXTURES = ("market_trades", "level2", "ticker")


def fixture(name: str) -> Any:
    return load_fixture("coinbase", name)


# ------------------------------------------------------------------ fixtures and types


def test_trade_ticker_and_level2_fixtures_decode_with_orjson_and_structs() -> None:
    snapshot, update = fixture("market_trades")
    assert orjson.loads(wire(snapshot)) == snapshot
    decode = coinbase_types.message_decoder(coinbase_types.TradesEvent)
    message = decode(memoryview(wire(update)))
    assert isinstance(message, coinbase_types.Message)
    assert (message.channel, message.sequence_num, message.client_id) == ("market_trades", 7, "")
    [event] = message.events
    assert event.type == "update" and [t.trade_id for t in event.trades] == [
        "000000001", "000000002"]
    trade = event.trades[0]
    assert (trade.product_id, trade.price, trade.size, trade.side) == (
        "ETH-USD", "1260.02", "0.1", "SELL")
    [ticker_sample] = fixture("ticker")
    ticker = msgspec.json.decode(wire(ticker_sample),
                                 type=coinbase_types.Message[coinbase_types.TickerEvent])
    [top] = ticker.events[0].tickers
    assert (top.product_id, top.best_bid, top.best_bid_quantity, top.best_ask,
            top.best_ask_quantity) == ("BTC-USD", "21931.98", "8000.21", "21933.98",
                                       "8038.07770938")
    l2_snapshot, l2_update = fixture("level2")
    book = msgspec.json.decode(wire(l2_snapshot),
                               type=coinbase_types.Message[coinbase_types.L2Event])
    [l2] = book.events
    assert (book.channel, l2.type, l2.product_id, len(l2.updates)) == (
        "l2_data", "snapshot", "BTC-USD", 3)
    assert l2.updates[0] == coinbase_types.L2Update("bid", "1970-01-01T00:00:00Z",
                                                    "21921.73", "0.06317902")
    # what does not fit the Struct (heartbeats, replies, other channels) stays a dict
    l2_decode = coinbase_types.message_decoder(coinbase_types.L2Event)
    assert l2_decode(memoryview(wire(l2_update))).events[0].updates[0].new_quantity == "0"
    for other in (snapshot, ticker_sample, *fixture("heartbeats"),
                  *fixture("control").values()):
        assert l2_decode(memoryview(wire(other))) == other


def test_topics_of_every_data_fixture_and_typed_messages() -> None:
    expected = {"market_trades": "market_trades:ETH-USD", "level2": "level2:BTC-USD",
                "ticker": "ticker:BTC-USD", "heartbeats": "heartbeats"}
    handler = Coinbase()
    for name, topic in expected.items():
        for sample in fixture(name):
            assert handler.topic_of(sample) == topic
    typed = coinbase_types.message_decoder(coinbase_types.TradesEvent)(
        memoryview(wire(fixture("market_trades")[0])))
    assert coinbase.topic_of(typed) == "market_trades:ETH-USD"
    assert coinbase.topic_of({"channel": "l2_data", "events": []}) is None
    assert coinbase.topic_of("nope") is None


def test_topics_round_trip_and_malformed_products() -> None:
    for topic, request in (("level2:BTC-USD", ("level2", "BTC-USD")),
                           ("market_trades:ETH-USDC", ("market_trades", "ETH-USDC")),
                           ("heartbeats", ("heartbeats", None))):
        assert coinbase.to_request(topic) == request
        channel, product = request
        message = coinbase.subscribe_message(channel, [product] if product else [])
        assert message == {"type": "subscribe", "product_ids": [product] if product else [],
                           "channel": channel}
    assert coinbase.topic_problem("level2:BTC-USD") is None
    assert coinbase.topic_problem("heartbeats") is None
    for bad in ("level2:btc-usd", "level2:BTC", ":BTC-USD", "ticker:BTC USD"):
        assert coinbase.topic_problem(bad) is not None, bad


def test_control_prefixes_match_every_reply_and_no_data_message() -> None:
    # venue heartbeats are VenueHeartbeat results: control, not data
    assert_prefixes_split(Coinbase.control_prefixes,
                          [*fixture("control").values(), *fixture("heartbeats")],
                          [s for name in DATA_FIXTURES for s in fixture(name)])


def test_heartbeats_are_venue_heartbeats_unless_the_user_subscribed_them() -> None:
    [beat] = fixture("heartbeats")[:1]
    handler = Coinbase()
    handler.subscribe_messages(["level2:BTC-USD"])
    assert handler.classify(beat) == (VenueHeartbeat("coinbase heartbeats"),)
    handler.subscribe_messages(["heartbeats"])  # the user's own topic: data for them
    assert handler.classify(beat) == ()
    handler.unsubscribe_messages(["heartbeats"])
    assert handler.classify(beat) == (VenueHeartbeat("coinbase heartbeats"),)


# ------------------------------------------------------------------ the handler alone


def test_one_request_per_channel_heartbeats_first_on_each_connection() -> None:
    handler = Coinbase()
    handler.on_connection()
    messages = handler.subscribe_messages(
        ["level2:BTC-USD", "market_trades:BTC-USD", "level2:ETH-USD", "level2:nope"])
    assert messages == [
        {"type": "subscribe", "product_ids": [], "channel": "heartbeats"},
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "market_trades"}]
    assert handler.subscribe_messages(["ticker:BTC-USD"]) == [
        {"type": "subscribe", "product_ids": ["BTC-USD"], "channel": "ticker"}]
    assert handler.unsubscribe_messages(["ticker:BTC-USD"]) == [
        {"type": "unsubscribe", "product_ids": ["BTC-USD"], "channel": "ticker"}]
    handler.on_connection()  # a new connection subscribes heartbeats again
    assert handler.subscribe_messages(["ticker:BTC-USD"])[0]["channel"] == "heartbeats"
    mine = Coinbase(heartbeats=False)
    assert [m["channel"] for m in mine.subscribe_messages(["ticker:BTC-USD"])] == ["ticker"]
    own = Coinbase()  # a "heartbeats" topic of the user's: no second request
    assert [m["channel"] for m in own.subscribe_messages(["heartbeats", "ticker:X-Y"])] == [
        "heartbeats", "ticker"]


def subscriptions(current: dict[str, list[str]], seq: int = 1) -> dict[str, Any]:
    return {"channel": "subscriptions", "client_id": "", "timestamp": "t",
            "sequence_num": seq, "events": [{"subscriptions": current}]}


def test_subscriptions_replies_ack_errors_reject_the_oldest_request() -> None:
    handler = Coinbase()
    handler.on_connection()
    handler.subscribe_messages(["level2:BTC-USD", "market_trades:BTC-USD", "level2:x"])
    # the heartbeats request's own reply answers nothing of the user's: housekeeping
    assert handler.classify(subscriptions({"heartbeats": []}, 0)) == (
        VenueHeartbeat("coinbase subscriptions reply"),)
    # a reply lists every current subscription; each request it confirms is answered
    assert handler.classify(subscriptions({"heartbeats": [], "level2": ["BTC-USD"]}, 1)) == [
        Ack("level2:BTC-USD")]
    handler.subscribe_messages(["ticker:ETH-USD"])
    error = fixture("control")["error"]
    # a malformed product is never sent: refused with the batch's last request
    assert handler.classify(error) == [
        Ack("level2:x", ok=False,
            detail="'level2:x': 'x' is not a Coinbase product id like 'BTC-USD'"),
        Ack("market_trades:BTC-USD", ok=False, detail="failure to subscribe")]
    assert handler.classify(subscriptions(
        {"heartbeats": [], "level2": ["BTC-USD"], "ticker": ["ETH-USD"]}, 2)) == [
        Ack("ticker:ETH-USD")]
    assert handler.classify(error) == ()  # nothing waiting: logged and passed on as data
    assert handler.untraced_errors == 1
    handler.unsubscribe_messages(["level2:BTC-USD"])
    assert handler.classify(fixture("control")["subscriptions_none"]) == [
        Ack("level2:BTC-USD", unsubscribe=True)]
    assert handler.classify(fixture("market_trades")[0]) == ()
    assert handler.gaps == handler.regressions == 0


def test_unanswered_requests_expire() -> None:
    now = [0.0]
    handler = Coinbase(request_expiry_s=5.0, clock=lambda: now[0], heartbeats=False)
    handler.subscribe_messages(["level2:BTC-USD"])  # a dead connection's request
    now[0] = 10.0
    handler.subscribe_messages(["ticker:BTC-USD"])
    assert handler.classify(fixture("control")["error"]) == [
        Ack("ticker:BTC-USD", ok=False, detail="failure to subscribe")]


def numbered(seq: int, channel: str = "market_trades") -> dict[str, Any]:
    return {"channel": channel, "client_id": "", "timestamp": "t", "sequence_num": seq,
            "events": []}


def test_sequence_num_is_checked_across_the_connection() -> None:
    gaps: list[Gap] = []
    handler = Coinbase(on_gap=gaps.append)
    handler.on_connection()
    for seq in (0, 1):
        assert handler.sequence_of(numbered(seq)) is None
    handler.classify(subscriptions({}, 2))  # a reply counts too
    handler.sequence_of(numbered(3, "heartbeats"))
    assert gaps == []
    handler.classify(subscriptions({}, 6))  # 4 and 5 lost before a reply
    assert gaps == []  # reported with the next data message
    handler.sequence_of(numbered(7))
    handler.sequence_of(numbered(9))
    assert gaps == [Gap("sequence_num", 4, 5), Gap("sequence_num", 8, 8)]
    assert (handler.gaps, handler.missing) == (2, 3)
    handler.sequence_of(numbered(9))  # the same message routed twice: nothing
    handler.sequence_of(numbered(2))
    assert handler.regressions == 1
    handler.on_connection()  # a new connection starts again from 0
    handler.sequence_of(numbered(0))
    typed = coinbase_types.message_decoder(coinbase_types.TradesEvent)(
        memoryview(wire(fixture("market_trades")[1])))  # sequence_num 7
    handler.sequence_of(typed)
    assert gaps[-1] == Gap("sequence_num", 1, 6) and handler.gaps == 3


def test_declared_limits_heartbeat_dedup_and_default_url() -> None:
    handler = Coinbase()
    limits = handler.limits
    assert limits.problems() == []
    assert limits.connections_per_window == (8, 1.0)  # the stricter of 8/s and 750/s
    assert limits.messages_per_s is not None
    assert limits.burst + limits.messages_per_s <= 8  # unauthenticated messages per s
    assert limits.max_connection_age_s is None
    assert isinstance(handler.heartbeat, WsPing)
    assert handler.dedup is not None and handler.dedup.hash_field == "events"
    assert handler.dedup.key_of is not None  # a pool then leaves sequences alone
    assert handler.tracks_sequences and not Coinbase(check_sequence=False).tracks_sequences
    assert Coinbase(dedup=False).dedup is None
    assert handler.url(0) == Coinbase.default_url == coinbase.DEFAULT_URL
    assert Coinbase(coinbase.USER_URL).url(0) == "wss://advanced-trade-ws-user.coinbase.com"
    with pytest.raises(ValueError):
        Coinbase(max_topics_per_message=0)


def test_jwt_goes_in_every_request_and_nowhere_else() -> None:
    tokens = (f"eyJ.SECRET-{i}" for i in itertools.count())
    handler = Coinbase(jwt=lambda: next(tokens))
    messages = handler.subscribe_messages(["level2:BTC-USD"])
    assert [m["jwt"] for m in messages] == ["eyJ.SECRET-0", "eyJ.SECRET-1"]
    assert handler.unsubscribe_messages(["level2:BTC-USD"])[0]["jwt"] == "eyJ.SECRET-2"
    assert "SECRET" not in repr(handler) and "jwt" in repr(handler)
    assert "jwt" not in repr(Coinbase())


def test_the_dialect_enum_and_its_checks() -> None:
    assert isinstance(Dialect.COINBASE.implementation(), CoinbaseDialect)
    with pytest.raises(ValueError):
        CoinbaseDialect(channels=["user"])
    with pytest.raises(ValueError):
        CoinbaseDialect(heartbeat_interval_s=0)


# ------------------------------------------------------------------ end to end


def cb_sim(**kwargs: Any) -> ExchangeSimulator:
    names = ("heartbeat_interval_s", "subscribe_deadline_s", "idle_timeout_s", "accept_jwt")
    options = {k: kwargs.pop(k) for k in names if k in kwargs}
    options.setdefault("heartbeat_interval_s", 0.1)
    return ExchangeSimulator(dialect=CoinbaseDialect(**options), **kwargs)


def dialect(sim: ExchangeSimulator) -> CoinbaseDialect:
    impl = sim.dialect_impl
    assert isinstance(impl, CoinbaseDialect)
    return impl


def trade_ids(message: Any) -> list[tuple[str, int]]:
    """``(topic, trade_id)`` of each trade of a ``market_trades`` message."""
    if message.get("channel") != "market_trades":
        return []
    return [(f"market_trades:{trade['product_id']}", int(trade["trade_id"]))
            for event in message["events"] for trade in event["trades"]]


async def test_client_acks_refusals_and_every_channel() -> None:
    got = Pushes(trade_ids)
    rejected: list[tuple[str, str]] = []
    topics = ["market_trades:BTC-USD", "level2:ETH-USD", "heartbeats"]
    async with cb_sim(rate_per_s=50, reject_topics={"ticker:SOL-USD"}) as sim:
        handler = Coinbase(url=sim.url, on_data=got.on_data)
        client = FeedClient(handler, topics=[*topics, "ticker:SOL-USD", "level2:eth-usd"],
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(topics)
            await until(lambda: len(got.ids["market_trades:BTC-USD"]) > 20
                        and "heartbeats" in got.channels())
            snap = client.snapshot()
    assert sorted(t for t, _ in rejected) == ["level2:eth-usd", "ticker:SOL-USD"]
    assert dict(rejected)["ticker:SOL-USD"] == "Failed to subscribe"
    assert "product id" in dict(rejected)["level2:eth-usd"]
    assert snap["unknown_acks"] == 0 and snap["decode_errors"] == 0
    assert got.channels() >= {"market_trades", "l2_data", "heartbeats"}
    l2 = [m for m in got.pushes if m["channel"] == "l2_data"]
    assert l2[0]["events"][0]["type"] == "snapshot"  # then updates
    assert {m["events"][0]["type"] for m in l2[1:]} == {"update"}
    assert handler.gaps == handler.regressions == 0
    got.assert_exactly_once_in_order()


async def test_heartbeats_keep_a_quiet_connection_past_the_idle_cut() -> None:
    # 20 heartbeats per idle window: only a 2 s stall of the loop could cut the beating one
    async with cb_sim(rate_per_s=0, idle_timeout_s=2.0) as sim:
        beating, silent = Coinbase(url=sim.url), Coinbase(url=sim.url, heartbeats=False)
        lost = await idle_cut_of_the_silent_client(  # "pinging": subscribed to heartbeats
            beating, silent, ("market_trades:BTC-USD", "market_trades:ETH-USD"),
            settle_s=2.5, **FAST)  # more than an idle window since the silent one's cut
        assert dialect(sim).idle_cuts >= 1 and dialect(sim).heartbeats_sent > 10
    assert lost.reason is DisconnectReason.PEER_CLOSE
    assert lost.close_code == sim_coinbase.IDLE_CLOSE[0]


async def test_heartbeats_alone_are_a_stale_feed() -> None:
    disconnects: list[Disconnect] = []
    async with cb_sim(rate_per_s=0) as sim:
        client = FeedClient(Coinbase(url=sim.url), topics=["market_trades:BTC-USD"],
                            stale_after_s=2.0, on_disconnected=disconnects.append, **FAST)
        async with client:
            await client.wait_live(20)
            # heartbeats alone are not data: the data stale clock runs out while they
            # keep coming (design: venue heartbeats do not count)
            await until(lambda: disconnects != [])
            assert dialect(sim).heartbeats_sent >= 10
            await client.wait_live(20)
    assert disconnects[0].reason is DisconnectReason.STALE


async def test_pongs_withheld_are_a_ping_timeout() -> None:
    disconnects: list[Disconnect] = []
    async with cb_sim(rate_per_s=20) as sim:
        client = FeedClient(Coinbase(url=sim.url), topics=["market_trades:BTC-USD"],
                            heartbeat=WsPing(interval_s=0.2, timeout_s=2.0),
                            on_disconnected=disconnects.append, **FAST)
        async with client:
            await client.wait_live(20)
            await until(lambda: client.snapshot()["pongs"] > 2)
            sim.withhold_pongs()
            await until(lambda: disconnects != [])
            sim.withhold_pongs(False)
            await client.wait_live(20)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT


async def test_a_connection_that_never_subscribes_is_cut() -> None:
    lost: list[Disconnect] = []
    async with cb_sim(subscribe_deadline_s=0.3) as sim:
        async with FeedClient(Coinbase(url=sim.url), on_disconnected=lost.append, **FAST):
            await until(lambda: lost != [])
        assert dialect(sim).deadline_cuts >= 1
    assert lost[0].reason is DisconnectReason.PEER_CLOSE
    assert sim_coinbase.DEADLINE_CLOSE[1] in lost[0].detail


def book_levels(book: CoinbaseBook) -> dict[tuple[str, Decimal], Decimal]:
    return {**{("bid", lv.price): lv.size for lv in book.bids()},
            **{("offer", lv.price): lv.size for lv in book.asks()}}


def venue_levels(sim: ExchangeSimulator, topic: str) -> dict[tuple[str, Decimal], Decimal]:
    return {(side, Decimal(price)): Decimal(qty)
            for (side, price), qty in dialect(sim).book(topic).items()}


async def test_a_sequence_gap_resyncs_the_level2_book() -> None:
    """Snapshot + updates keep a CoinbaseBook equal to the venue's; a lost message
    (a jump in ``sequence_num``) breaks it, and a resubscribe brings it back."""
    topic = "level2:ETH-USD"
    book = CoinbaseBook("ETH-USD", check_sequence=False)  # the handler checks
    gaps: list[Gap] = []
    updates = [0]

    def on_data(message: Any) -> None:
        if message.get("channel") == "l2_data":
            updates[0] += message["events"][0]["type"] == "update"
            book.apply(message)

    def on_gap(gap: Gap) -> None:
        gaps.append(gap)
        book.request_resync(f"sequence_num {gap.first_missing}..{gap.last_missing} lost")

    async with cb_sim(rate_per_s=100) as sim:
        handler = Coinbase(url=sim.url, on_data=on_data, on_gap=on_gap)
        async with FeedClient(handler, topics=[topic, "market_trades:BTC-USD"],
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: book.is_live and book.counters.applied > 20)
            dialect(sim).skip_sequence(3)
            await until(lambda: gaps != [])
            assert not book.is_live and book.pending_action is ResyncAction.RESUBSCRIBE
            client.unsubscribe(topic)
            await until(lambda: sim.subscribers(topic) == 0)
            client.subscribe(topic)
            await until(lambda: book.is_live)
            applied = book.counters.applied
            await until(lambda: book.counters.applied > applied + 20)
            sim.set_rate(0)
            await until(lambda: updates[0] == sim.messages_sent[topic])
            assert book_levels(book) == venue_levels(sim, topic)
    [gap] = gaps
    assert gap.size == 3 and gap.topic == coinbase.SEQUENCE_TOPIC
    assert book.last_resync is not None
    assert book.last_resync.reason is ResyncReason.USER_REQUESTED
    assert book.counters.resyncs_total == 1


async def test_jwt_on_the_wire_never_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="defi_ws")
    tokens = (f"eyJ.SECRET-{i}" for i in itertools.count())
    got = Pushes(trade_ids)
    rejected: list[tuple[str, str]] = []
    async with cb_sim(rate_per_s=20, accept_jwt=lambda t: t.startswith("eyJ.SECRET")) as sim:
        good = Coinbase(url=sim.url, jwt=lambda: next(tokens), on_data=got.on_data)
        async with FeedClient(good, topics=["market_trades:BTC-USD"], **FAST) as client:
            await client.wait_live(20)
            await until(lambda: len(got.ids["market_trades:BTC-USD"]) > 5)
        assert dialect(sim).jwts_seen >= 2
        bad = Coinbase(url=sim.url, jwt=lambda: "eyJ.WRONG-SECRET")
        async with FeedClient(bad, topics=["market_trades:BTC-USD"],
                              on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                              **FAST):
            await until(lambda: rejected != [])
        assert dialect(sim).jwt_refusals == 2  # heartbeats and market_trades
    assert rejected == [("market_trades:BTC-USD", "authentication failure")]
    assert "SECRET" not in caplog.text


async def test_redundant_pool_delivers_each_message_once() -> None:
    got = Pushes(trade_ids)
    topics = ["market_trades:BTC-USD", "market_trades:ETH-USD", "ticker:BTC-USD",
              "level2:BTC-USD"]
    async with cb_sim(rate_per_s=100) as sim:
        handler = Coinbase(url=sim.url, on_data=got.on_data)
        async with FeedPool(handler, topics=topics, redundancy=2,
                            client_options=FAST) as pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(t) == 2 for t in topics))
            await until(lambda: len(got.ids["market_trades:BTC-USD"]) > 200)
            snap = pool.snapshot()
    got.assert_exactly_once_in_order()
    updates = [orjson.dumps(m["events"]) for m in got.pushes
               if m["channel"] in ("ticker", "l2_data")
               and m["events"][0]["type"] == "update"]
    assert len(updates) == len(set(updates))
    assert snap["duplicates_dropped"] > 200 and snap["gaps"] == 0
    assert handler.gaps == handler.regressions == 0  # a pool never checks sequence_num


async def test_pool_rotation_before_a_cut_without_gap_or_duplicate() -> None:
    """Coinbase documents no forced cut; a pool told of one (``max_connection_age_s``)
    rotates make-before-break and the events' hash drops the overlap's duplicates."""
    got = Pushes(trade_ids)
    disconnects: list[Disconnect] = []
    limits = dataclasses.replace(coinbase.LIMITS, max_connection_age_s=3.0)
    async with cb_sim(rate_per_s=100, max_connection_age_s=4.0) as sim:
        handler = Coinbase(url=sim.url, on_data=got.on_data, limits=limits)
        pool = FeedPool(handler, topics=["market_trades:BTC-USD"], rotate_before_s=1.5,
                        rotation_jitter_s=0.0, rotation_overlap_s=0.2,
                        on_disconnected=disconnects.append, client_options=FAST)
        async with pool:
            await pool.wait_live(20)
            await until(lambda: pool.rotations >= 2, timeout_s=30)
            before = len(got.ids["market_trades:BTC-USD"])
            await until(lambda: len(got.ids["market_trades:BTC-USD"]) > before + 50)
            snap = pool.snapshot()
        assert sim.shutdown_cuts == 0
    got.assert_exactly_once_in_order()
    assert disconnects == [] and snap["duplicates_dropped"] > 0


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """Coinbase's rules scaled down: products per request, topics per connection, the
    message rate (8/s) and the connection rate."""
    got = Pushes(trade_ids)
    limits = VenueLimits(topics_per_connection=4, messages_per_s=2.0, burst=4,
                         connections_per_window=(2, 1.0), max_connection_age_s=None)
    async with cb_sim(rate_per_s=20, max_topics_per_connection=4, max_topics_per_message=2,
                      max_messages_per_s=8, max_connections_per_window=(3, 1.0)) as sim:
        handler = Coinbase(url=sim.url, on_data=got.on_data, max_topics_per_message=2,
                           limits=limits)
        topics = [f"market_trades:C{i}-USD" for i in range(10)]
        async with FeedPool(handler, topics=topics, client_options=FAST) as pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            pool.unsubscribe(topics[:2])
            pool.subscribe(["market_trades:D1-USD", "market_trades:D2-USD"])
            await pool.wait_live(30)
            await until(lambda: len(got.ids["market_trades:D2-USD"]) > 5)
        assert sim.limit_hits == 0, sim.stats()
    got.assert_exactly_once_in_order()
