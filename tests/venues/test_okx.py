"""The OKX adapter: fixtures, acks, login, limits, and end to end over loopback.

Fixtures (``tests/fixtures/okx``) are the docs' samples, decoded by orjson and by the
typed Structs. End-to-end tests run ``Okx`` through ``FeedClient`` and ``FeedPool``
against the simulator's OKX dialect (per-arg acks, text ping, idle cut, login, 64008
notices, the request budget), on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from typing import Any

import msgspec
import orjson
import pytest

from defi_ws import FeedClient, FeedPool, VenueLimits
from defi_ws.books import OkxBook, ResyncAction, ResyncReason
from defi_ws.errors import FatalDisconnect
from defi_ws.handler import Ack, AuthReply, Notice
from defi_ws.heartbeat import NoPing, TextPing
from defi_ws.reasons import Disconnect, DisconnectReason
from defi_ws.reconnect import FixedDelay
from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import OkxDialect
from defi_ws.testing.dialects import okx as sim_okx
from defi_ws.venues import okx, okx_types
from defi_ws.venues.okx import Okx, OkxCredentials
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
#: Scaled down: OKX cuts after 30 s idle and wants a ping every < 30 s.
PING = TextPing("ping", "pong", interval_s=0.2, timeout_s=2.0)
CREDS = OkxCredentials("api-key-1", "SECRET-XYZ", "PASSPHRASE-XYZ")


def fixture(name: str) -> Any:
    return load_fixture("okx", name)



# ------------------------------------------------------------------ fixtures and types


def test_trade_fixture_decodes_with_orjson_and_structs() -> None:
    [sample] = fixture("trades")
    raw = wire(sample)
    assert orjson.loads(raw) == sample
    push = msgspec.json.decode(raw, type=okx_types.Push[okx_types.Trade])
    [trade] = push.data
    assert (push.arg.channel, push.arg.instId, push.arg.topic()) == (
        "trades", "BTC-USDT", "trades:BTC-USDT")
    assert (trade.tradeId, trade.px, trade.sz, trade.side, trade.ts, trade.count,
            trade.seqId) == ("130639474", "42219.9", "0.12060306", "buy", "1630048897897",
                             "3", 1234)
    decode = okx_types.push_decoder(okx_types.Trade)
    assert decode(memoryview(raw)) == push
    assert decode(memoryview(wire(fixture("bbo_tbt")[0]))) == fixture("bbo_tbt")[0]  # a dict


def test_bbo_and_book_fixtures() -> None:
    [bbo_sample] = fixture("bbo_tbt")
    bbo = msgspec.json.decode(wire(bbo_sample), type=okx_types.Push[okx_types.Bbo])
    [top] = bbo.data
    assert (top.asks, top.bids, top.seqId) == (
        [("111.06", "55154", "0", "2")], [("111.05", "57745", "0", "2")], 363996337)
    [book_sample] = fixture("books")
    book = msgspec.json.decode(wire(book_sample), type=okx_types.Push[okx_types.BookUpdate])
    [update] = book.data
    assert book.action == "update" and len(update.asks) == len(update.bids) == 8
    assert (update.prevSeqId, update.seqId, update.checksum) == (123456, 123457, -855196043)
    assert update.asks[0] == ("8476.98", "415", "0", "13")
    handler = Okx()
    assert handler.topic_of(book_sample) == "books:BTC-USDT"
    assert handler.topic_of(book) == "books:BTC-USDT"  # typed, too


def test_topics_and_args_round_trip() -> None:
    for topic, arg in (
        ("trades:BTC-USDT", {"channel": "trades", "instId": "BTC-USDT"}),
        ("orders:instType=ANY", {"channel": "orders", "instType": "ANY"}),
        ("orders:instId=BTC-USDT,instType=SPOT",
         {"channel": "orders", "instType": "SPOT", "instId": "BTC-USDT"}),
        ("account", {"channel": "account"}),
    ):
        assert okx.to_arg(topic) == arg and okx.to_topic(arg) == topic
    assert okx.to_topic({"channel": "orders", "instType": "ANY", "uid": "7"}) == (
        "orders:instType=ANY")
    assert okx.to_topic("nope") is None


def test_control_prefixes_match_every_event_and_no_push() -> None:
    prefixes = Okx.control_prefixes
    assert_prefixes_split(prefixes, fixture("control").values(),
                          [s for name in ("trades", "bbo_tbt", "books") for s in fixture(name)])


# ------------------------------------------------------------------ the handler alone


def test_per_arg_acks_errors_login_and_notice() -> None:
    handler = Okx()
    [request] = handler.subscribe_messages(["trades:BTC-USDT", "books:NOPE", "bbo-tbt:ETH-USDT"])
    assert request == {"id": "1", "op": "subscribe", "args": [
        {"channel": "trades", "instId": "BTC-USDT"}, {"channel": "books", "instId": "NOPE"},
        {"channel": "bbo-tbt", "instId": "ETH-USDT"}]}
    ack = {"id": "1", "event": "subscribe", "connId": "a",
           "arg": {"channel": "bbo-tbt", "instId": "ETH-USDT"}}
    assert handler.classify(ack) == [Ack("bbo-tbt:ETH-USDT")]
    ack["arg"] = {"channel": "trades", "instId": "BTC-USDT"}
    assert handler.classify(ack) == [Ack("trades:BTC-USDT")]
    error = {"id": "1", "event": "error", "code": "60018", "msg": "Wrong URL", "connId": "a"}
    assert handler.classify(error) == [Ack("books:NOPE", ok=False, detail="60018: Wrong URL")]
    controls = fixture("control")
    assert handler.classify(controls["subscribe_error"]) == ()  # not our request
    assert handler.untraced_errors == 1
    assert handler.classify(controls["login_ok"]) == [AuthReply(True, "")]
    assert handler.classify(controls["login_error"]) == [
        AuthReply(False, "60009: Login failed.")]
    [notice] = handler.classify(controls["notice"])
    assert isinstance(notice, Notice) and notice.detail.startswith("64008")
    assert handler.classify(fixture("trades")[0]) == ()
    [gone] = handler.unsubscribe_messages(["trades:BTC-USDT"])
    assert handler.classify({"id": gone["id"], "event": "unsubscribe",
                             "arg": {"channel": "trades", "instId": "BTC-USDT"}}) == [
        Ack("trades:BTC-USDT", unsubscribe=True)]


def test_login_signature_and_hidden_credentials() -> None:
    handler = Okx("private", credentials=CREDS, clock=lambda: 1538054050.975)
    [login] = handler.auth_messages()
    [arg] = login["args"]
    expected = base64.b64encode(hmac.new(b"SECRET-XYZ", b"1538054050GET/users/self/verify",
                                         hashlib.sha256).digest()).decode()
    assert arg == {"apiKey": "api-key-1", "passphrase": "PASSPHRASE-XYZ",
                   "timestamp": "1538054050", "sign": expected}
    assert arg["sign"] == sim_okx.login_sign("SECRET-XYZ", "1538054050")  # the venue agrees
    for text in (repr(handler), repr(CREDS), str(CREDS)):
        assert "SECRET" not in text and "PASSPHRASE" not in text and "api-key" not in text
    assert handler.url(0) == "wss://ws.okx.com:8443/ws/v5/private"
    assert Okx().auth_messages() == ()


def test_declared_limits_heartbeat_and_dedup() -> None:
    handler = Okx()
    limits = handler.limits
    assert limits.connections_per_window == (3, 1.0) and limits.max_connection_age_s is None
    assert limits.messages_per_s is not None
    assert limits.burst + limits.messages_per_s * 3600 <= 480  # requests per hour
    assert isinstance(handler.heartbeat, TextPing)
    assert handler.heartbeat.interval_s + handler.heartbeat.timeout_s < 30  # idle cut
    assert handler.dedup is not None and handler.dedup.hash_field == "data"
    assert handler.tracks_sequences is False


# ------------------------------------------------------------------ end to end


def okx_sim(**kwargs: Any) -> ExchangeSimulator:
    options = {k: kwargs.pop(k) for k in ("idle_timeout_s", "request_budget") if k in kwargs}
    dialect = OkxDialect(channels=sim_okx.ALL_CHANNELS,
                         credentials=sim_okx.OkxCredentials("api-key-1", "SECRET-XYZ",
                                                            "PASSPHRASE-XYZ"), **options)
    return ExchangeSimulator(dialect=dialect, **kwargs)


def trade_ids(message: Any) -> list[tuple[str, int]]:
    """``(topic, tradeId)`` of each trade of a ``trades`` push."""
    if message.get("arg", {}).get("channel") != "trades":
        return []
    topic = okx.to_topic(message["arg"]) or ""
    return [(topic, int(trade["tradeId"])) for trade in message["data"]]


TOPICS = ["trades:BTC-USDT", "bbo-tbt:BTC-USDT", "books:ETH-USDT"]


async def test_client_acks_per_arg_refusals_and_text_pongs() -> None:
    pushes = Pushes(trade_ids)
    rejected: list[tuple[str, str]] = []
    async with okx_sim(rate_per_s=50, reject_topics={"trades:ETH-USDT"}) as sim:
        handler = Okx(url=sim.url + "ws/v5/public", on_data=pushes.on_data)
        client = FeedClient(handler, topics=[*TOPICS, "trades:ETH-USDT"], heartbeat=PING,
                            on_subscription_rejected=lambda t, d: rejected.append((t, d)),
                            **FAST)
        async with client:
            await client.wait_live(20)
            assert sorted(client.confirmed_topics) == sorted(TOPICS)
            await until(lambda: len(pushes.ids["trades:BTC-USDT"]) > 20
                        and client.snapshot()["pongs"] > 3)
            snap = client.snapshot()
    assert [t for t, _ in rejected] == ["trades:ETH-USDT"] and "60018" in rejected[0][1]
    assert snap["rtt"]["count"] > 0 and snap["unknown_acks"] == 0
    assert snap["decode_errors"] == 0
    channels = {p["arg"]["channel"] for p in pushes.pushes}
    assert channels == {"trades", "bbo-tbt", "books"}
    books = [p for p in pushes.pushes if p["arg"]["channel"] == "books"]
    assert books[0]["action"] == "snapshot"  # sent after the ack, then updates
    pushes.assert_exactly_once_in_order()


async def test_pongs_withheld_are_a_ping_timeout() -> None:
    async with okx_sim(rate_per_s=20) as sim:
        handler = Okx(url=sim.url + "ws/v5/public")
        disconnects = await ping_timeout_then_recovery(sim, handler, "trades:BTC-USDT",
                                                       PING, **FAST)
    assert disconnects[0].reason is DisconnectReason.PING_TIMEOUT


async def test_the_text_ping_keeps_a_quiet_connection_past_the_idle_cut() -> None:
    async with okx_sim(rate_per_s=0, idle_timeout_s=1.5) as sim:
        pinging, silent = (Okx(url=sim.url + "ws/v5/public") for _ in range(2))
        lost = await idle_cut_of_the_silent_client(
            pinging, silent, ("trades:BTC-USDT", "trades:SOL-USDT"), PING, **FAST)
    assert lost.reason is DisconnectReason.PEER_CLOSE
    assert lost.close_code == sim_okx.IDLE_CLOSE[0]


async def test_login_then_private_channel_and_no_secret_in_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="defi_ws")
    pushes = Pushes(trade_ids)
    async with okx_sim(rate_per_s=20) as sim:
        handler = Okx("private", url=sim.url + "ws/v5/private", credentials=CREDS,
                      on_data=pushes.on_data)
        async with FeedClient(handler, topics=["orders:instType=ANY"], heartbeat=PING,
                              **FAST) as client:
            await client.wait_live(20)
            await until(lambda: len(pushes.pushes) > 5)
        assert sim.logins_ok == 1
    assert pushes.pushes[0]["arg"]["channel"] == "orders"
    for secret in ("SECRET-XYZ", "PASSPHRASE-XYZ", "api-key-1"):
        assert secret not in caplog.text


async def test_a_refused_login_is_fatal() -> None:
    async with okx_sim() as sim:
        wrong = OkxCredentials("api-key-1", "WRONG", "PASSPHRASE-XYZ")
        handler = Okx("private", url=sim.url + "ws/v5/private", credentials=wrong)
        client = FeedClient(handler, topics=["orders:instType=ANY"], heartbeat=PING, **FAST)
        async with client:
            with pytest.raises(FatalDisconnect) as info:
                await client.wait_live(20)
    assert info.value.disconnect.reason is DisconnectReason.AUTH_FAILED
    assert "60007" in info.value.disconnect.detail
    assert sim.logins_failed == 1 and sim.subscribers("orders:instType=ANY") == 0


async def test_pool_rotates_on_notice_64008_without_gap_or_duplicate() -> None:
    pushes = Pushes(trade_ids)
    disconnects: list[Disconnect] = []
    async with okx_sim(rate_per_s=200) as sim:
        handler = Okx(url=sim.url + "ws/v5/public", on_data=pushes.on_data)
        pool = FeedPool(handler, topics=TOPICS, rotation_overlap_s=0.1,
                        on_disconnected=disconnects.append,
                        client_options={**FAST, "heartbeat": PING})
        async with pool:
            await pool.wait_live(20)
            await until(lambda: len(pushes.ids["trades:BTC-USDT"]) > 20)
            [conn] = sim.connections
            assert sim.announce_shutdown(conn, cut_after_s=5.0) == 1
            await until(lambda: pool.rotations == 1)
            await until(lambda: conn.id not in sim.subscribed_connections("trades:BTC-USDT"))
            before = len(pushes.ids["trades:BTC-USDT"])
            await until(lambda: len(pushes.ids["trades:BTC-USDT"]) > before + 100)
            snap = pool.snapshot()
    pushes.assert_exactly_once_in_order()
    assert disconnects == [] and snap["duplicates_dropped"] > 0
    assert sim.shutdown_cuts == 0


async def test_redundant_pool_delivers_each_push_once() -> None:
    pushes = Pushes(trade_ids)
    async with okx_sim(rate_per_s=200) as sim:
        handler = Okx(url=sim.url + "ws/v5/public", on_data=pushes.on_data)
        async with FeedPool(handler, topics=TOPICS, redundancy=2,
                            client_options={**FAST, "heartbeat": PING}) as pool:
            await pool.wait_live(20)
            await until(lambda: all(sim.subscribers(t) == 2 for t in TOPICS))
            await until(lambda: len(pushes.ids["trades:BTC-USDT"]) > 200)
            snap = pool.snapshot()
    pushes.assert_exactly_once_in_order(contiguous=False)
    seq_ids = [p["data"][0]["seqId"] for p in pushes.pushes
               if p["arg"]["channel"] == "bbo-tbt"]
    assert len(seq_ids) == len(set(seq_ids))
    assert snap["duplicates_dropped"] > 200


async def test_the_pool_never_hits_the_venues_limits() -> None:
    """OKX's rules scaled down: the request budget, topics, connection rate, notices."""
    pushes = Pushes(trade_ids)
    # 12 requests in any 6 s per connection (OKX: 480 an hour): burst 4 + 1/s * 6 = 10.
    # (The connection rate is one below the venue's: the venue counts a connection when
    # its upgrade completes, the pool when it starts it.)
    limits = VenueLimits(topics_per_connection=6, messages_per_s=1.0, burst=4,
                         connections_per_window=(2, 1.0), max_connection_age_s=None)
    async with okx_sim(rate_per_s=20, request_budget=(12, 6.0), max_topics_per_connection=6,
                       max_topics_per_message=3, max_connections_per_window=(3, 1.0)) as sim:
        handler = Okx(url=sim.url + "ws/v5/public", on_data=pushes.on_data,
                      max_topics_per_message=3, limits=limits)
        topics = [f"trades:C{i}-USDT" for i in range(15)]
        pool = FeedPool(handler, topics=topics, rotation_overlap_s=0.05,
                        client_options={**FAST, "heartbeat": TextPing(
                            "ping", "pong", interval_s=2.0, timeout_s=1.0)})
        async with pool:
            await pool.wait_live(30)
            assert len(pool.clients()) == 3
            for conn in list(sim.connections):
                sim.announce_shutdown(conn, cut_after_s=10.0)
            await until(lambda: pool.rotations >= 3, timeout_s=40)
            pool.unsubscribe(topics[:2])
            pool.subscribe(["trades:D1-USDT", "trades:D2-USDT"])
            await pool.wait_live(30)
            await until(lambda: len(pushes.ids["trades:D2-USDT"]) > 5)
        assert sim.limit_hits == 0, sim.stats()
    pushes.assert_exactly_once_in_order()


class Keeper:
    """An ``OkxBook`` fed every push; resubscribes (on the loop's next turn) when asked."""

    def __init__(self, inst_id: str) -> None:
        self.book = OkxBook(inst_id)  # reject_crossed and checksums on: the defaults
        self.topic = f"books:{inst_id}"
        self.client: FeedClient | None = None

    def on_data(self, message: Any) -> None:
        if self.book.apply(message).action is ResyncAction.RESUBSCRIBE:
            asyncio.get_running_loop().call_soon(self.resubscribe)

    def resubscribe(self) -> None:
        assert self.client is not None
        self.client.unsubscribe(self.topic)
        self.client.subscribe(self.topic)


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "checksum-0"])
async def test_an_okx_book_stays_in_sync_with_the_simulators_and_resyncs_once_per_fault(
        checksums: bool) -> None:
    """Thousands of updates with levels added, changed and removed; a bad checksum and a
    gap each cost one resync. Without checksums (0, as OKX sends since 2026-06) every
    message passes the crossed-book check instead."""
    dialect = OkxDialect(channels=["books"], checksums=checksums)
    keeper = Keeper("BTC-USDT")
    book, topic = keeper.book, keeper.topic
    async with ExchangeSimulator(dialect=dialect, rate_per_s=0) as sim:
        handler = Okx(url=sim.url + "ws/v5/public", on_data=keeper.on_data)
        client = keeper.client = FeedClient(handler, topics=[topic], heartbeat=PING, **FAST)

        async def caught_up() -> None:
            await until(lambda: book.is_live and book.last_update_id == sim.last_seq[topic])
            bids, asks = dialect.book_levels(topic)  # the venue's own top 25
            assert [(level.raw_price, level.raw_size) for level in book.bids(25)] == bids
            assert [(level.raw_price, level.raw_size) for level in book.asks(25)] == asks

        async with client:
            await client.wait_live(20)
            await until(lambda: book.is_live)
            for _ in range(30):
                sim.burst(topic, 100)
                await caught_up()
            counters = book.counters
            assert counters.resyncs_total == 0 and counters.applied == 3000
            if checksums:
                assert counters.checksums_verified == 3001  # the snapshot's too
            else:
                assert counters.checksums_verified == 0 and counters.checksums_skipped == 3001
            dialect.checksum_fault(topic)
            sim.burst(topic, 50)
            await caught_up()
            sim.sequence_gap(topic)
            sim.burst(topic, 50)
            await caught_up()
            snap = client.snapshot()
    # The fault's checksum is never 0, so it is verified (and wrong) either way.
    assert counters.checksums_verified > 3000 if checksums else counters.checksums_verified == 1
    assert dict(counters.resyncs) == {ResyncReason.CHECKSUM_MISMATCH: 1,
                                      ResyncReason.SEQUENCE_GAP: 1}
    assert counters.snapshots == 3  # each resync got a new snapshot
    assert snap["reconnects"] == 0 and snap["topics_confirmed"] == 1
    assert sim.faults["checksum"] == 1 and sim.faults["sequence_gap"] == 1


def test_a_client_takes_the_handlers_heartbeat_and_outbound_rate() -> None:
    handler = Okx()
    config = FeedClient(handler)._config
    assert config.heartbeat is handler.heartbeat
    assert (config.rate_per_s, config.burst) == (okx.LIMITS.messages_per_s, okx.LIMITS.burst)
    mine = FeedClient(handler, heartbeat=NoPing(), outbound_rate_per_s=3.0)._config
    assert isinstance(mine.heartbeat, NoPing) and mine.rate_per_s == 3.0
