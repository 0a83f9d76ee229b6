"""Simulator dialects beyond their defaults: Binance paths, envelopes, properties, server
PINGs and the USD-M endpoint split; OKX channels, login, idle cut and request budget.

Driven over loopback by raw picows clients, on asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import picows
import pytest

from defi_ws.books import okx_checksum
from defi_ws.testing import ExchangeSimulator, SequenceScope
from defi_ws.testing.dialects import (
    BinanceDialect,
    Dialect,
    GenericDialect,
    OkxCredentials,
    OkxDialect,
    Product,
    okx,
)
from defi_ws.testing.dialects import binance as bn
from tests.testing.test_simulator_limits import Client, closed_by_server

TEXT, PING = picows.WSMsgType.TEXT, picows.WSMsgType.PING


async def connect(sim: ExchangeSimulator, path: str = "", **kwargs: Any) -> Client:
    _, client = await picows.ws_connect(Client, sim.url + path, **kwargs)
    assert isinstance(client, Client)
    return client


def test_enum_values_map_to_dialect_modules() -> None:
    assert isinstance(Dialect.GENERIC.implementation(), GenericDialect)
    assert isinstance(Dialect.OKX.implementation(), OkxDialect)
    usdm = Dialect.BINANCE_USDM.implementation()
    assert isinstance(usdm, BinanceDialect) and usdm.product is Product.USDM
    assert ExchangeSimulator(dialect="binance-usdm").dialect is Dialect.BINANCE_USDM
    dialect = BinanceDialect(channels=bn.ALL_CHANNELS)
    sim = ExchangeSimulator(dialect=dialect)
    assert (sim.dialect, sim.dialect_impl) == (Dialect.BINANCE, dialect)
    with pytest.raises(ValueError, match="another simulator"):
        ExchangeSimulator(dialect=dialect)
    with pytest.raises(ValueError, match="channels"):
        BinanceDialect(channels=["kline"])
    with pytest.raises(ValueError, match="GENERIC"):
        ExchangeSimulator(dialect=OkxDialect(), api_key="k", api_secret="s")


# ---------------------------------------------------------------------------- Binance


def binance(**kwargs: Any) -> ExchangeSimulator:
    return ExchangeSimulator(dialect=BinanceDialect(channels=bn.ALL_CHANNELS, **kwargs),
                             rate_per_s=0)


async def test_binance_combined_path_envelopes_and_every_channel() -> None:
    streams = ["btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker"]
    async with binance() as sim:
        client = await connect(sim, "stream?streams=" + "/".join(streams))
        await sim.wait_for(lambda: all(sim.subscribers(s) == 1 for s in streams))
        for stream in streams:
            sim.burst(stream, 2)
        await client.wait(lambda: len(client.messages()) == 8)
        by_stream: dict[str, list[Any]] = {}
        for message in client.messages():
            assert set(message) == {"stream", "data"}
            by_stream.setdefault(message["stream"], []).append(message["data"])
        trade, agg, depth, book = (by_stream[s] for s in streams)
        assert [t["t"] for t in trade] == [1, 2] and trade[0]["e"] == "trade"
        assert [a["a"] for a in agg] == [1, 2] and set(agg[0]) == {
            "e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"}
        assert [(d["U"], d["u"]) for d in depth] == [(1, 3), (4, 6)]
        assert depth[0]["e"] == "depthUpdate" and "pu" not in depth[0]
        assert float(depth[0]["b"][0][0]) < float(depth[0]["a"][0][0])
        assert [b["u"] for b in book] == [1, 2] and set(book[0]) == {"u", "s", "b", "B", "a", "A"}
        assert client.texts()[0].startswith(b'{"stream":"btcusdt@')
        await client.close()


async def test_binance_raw_path_stream_and_properties() -> None:
    async with binance() as sim:
        client = await connect(sim, "ws/ethusdt@trade")
        await sim.wait_for(lambda: sim.subscribers("ethusdt@trade") == 1)
        sim.burst("ethusdt@trade", 1)
        await client.wait(lambda: len(client.messages()) == 1)
        assert client.messages()[0]["e"] == "trade"  # raw: no envelope
        client.send({"method": "GET_PROPERTY", "params": ["combined"], "id": 1})
        client.send({"method": "SET_PROPERTY", "params": ["combined", True], "id": 2})
        client.send({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 3})
        client.send({"method": "GET_PROPERTY", "params": ["nope"], "id": 4})
        await client.wait(lambda: len(client.messages()) == 5)
        assert client.messages()[1:] == [
            {"result": False, "id": 1}, {"result": None, "id": 2},
            {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": 3},
            {"code": 0, "msg": "Unknown property", "id": 4}]
        sim.burst("ethusdt@trade", 1)
        await client.wait(lambda: len(client.messages()) == 6)
        assert client.messages()[-1]["stream"] == "ethusdt@trade"  # combined from now on
        await client.close()
        with pytest.raises(picows.WSHandshakeError) as info:
            await connect(sim, "ws/btcusdt@nope")
        assert info.value.response is not None and int(info.value.response.status) == 400


async def test_binance_flat_errors() -> None:
    async with binance(flat_errors=True) as sim:
        client = await connect(sim, "ws")
        client.send({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 9})
        await client.wait(lambda: len(client.messages()) == 1)
        assert client.messages() == [{"code": 2, "msg": "Invalid request: invalid stream", "id": 9}]
        await client.close()


async def test_binance_server_pings_answered_keep_the_connection() -> None:
    async with binance(ping_interval_s=0.1, pong_timeout_s=0.5) as sim:
        client = await connect(sim, "ws")
        await asyncio.sleep(1.0)
        dialect = sim.dialect_impl
        assert isinstance(dialect, BinanceDialect)
        assert dialect.server_pings >= 5 and dialect.pongs_received >= 4
        assert dialect.pong_timeouts == 0 and sim.current_connections == 1
        assert sim.stats()["dialect"]["server_pings"] == dialect.server_pings
        await client.close()


async def test_binance_server_closes_a_connection_that_does_not_pong() -> None:
    async with binance(ping_interval_s=0.1, pong_timeout_s=0.3) as sim:
        client = await connect(sim, "ws", enable_auto_pong=False)
        assert await closed_by_server(client) == bn.PONG_TIMEOUT_CLOSE
        pings = [payload for kind, payload in client.frames if kind == PING]
        assert pings and all(p.isdigit() for p in pings)  # the server's ms clock
        dialect = sim.dialect_impl
        assert isinstance(dialect, BinanceDialect) and dialect.pong_timeouts == 1


async def test_binance_usdm_endpoint_split() -> None:
    dialect = BinanceDialect(product=Product.USDM, channels=bn.ALL_CHANNELS)
    assert bn.usdm_endpoint("btcusdt@depth@100ms") == "public"
    assert bn.usdm_endpoint("btcusdt@aggTrade") == "market"
    async with ExchangeSimulator(dialect=dialect) as sim:
        public = await connect(sim, "public/ws")
        legacy = await connect(sim, "ws")
        for client in (public, legacy):
            client.send({"method": "SUBSCRIBE", "id": 1,
                         "params": ["btcusdt@depth@250ms", "btcusdt@aggTrade"]})
        for client in (public, legacy):
            await client.wait(lambda c=client: len(c.messages()) == 1)  # type: ignore[misc]
            assert client.messages() == [{"result": None, "id": 1}]
        assert dialect.misrouted == 3  # aggTrade on /public; both on the legacy path
        sim.burst("btcusdt@depth@250ms", 1)
        sim.burst("btcusdt@aggTrade", 1)
        await public.wait(lambda: len(public.messages()) == 2)
        await asyncio.sleep(0.1)
        update = public.messages()[1]
        assert update["e"] == "depthUpdate"
        assert (update["U"], update["u"], update["pu"]) == (1, 3, 0)
        assert "T" in update and len(legacy.messages()) == 1  # the legacy URL never pushes
        for client in (public, legacy):
            await client.close()


# ---------------------------------------------------------------------------- OKX

CREDS = OkxCredentials("key-1", "s3cret", "pass-1")


def okx_sim(**kwargs: Any) -> ExchangeSimulator:
    dialect = OkxDialect(channels=okx.ALL_CHANNELS, credentials=CREDS, **kwargs)
    return ExchangeSimulator(dialect=dialect)


def login(creds: OkxCredentials, ts: int | None = None) -> dict[str, Any]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"op": "login", "args": [{"apiKey": creds.api_key, "passphrase": creds.passphrase,
                                     "timestamp": stamp, "sign": okx.login_sign(creds.secret,
                                                                                stamp)}]}


def test_okx_topic_keys_and_secret_free_repr() -> None:
    assert okx.topic_key({"channel": "trades", "instId": "BTC-USDT"}) == "trades:BTC-USDT"
    assert okx.topic_key({"channel": "orders", "instType": "ANY", "uid": "7"}) == (
        "orders:instType=ANY")
    assert "s3cret" not in repr(CREDS) and "pass-1" not in repr(CREDS)


async def test_okx_channels_books_snapshot_then_chained_updates() -> None:
    async with okx_sim() as sim:
        client = await connect(sim, "ws/v5/public")
        args = [{"channel": c, "instId": "BTC-USDT"} for c in ("bbo-tbt", "books5", "books")]
        client.send({"id": "1", "op": "subscribe", "args": args})
        await client.wait(lambda: len(client.messages()) == 4)
        acks = client.messages()
        assert [a.get("event") for a in acks] == ["subscribe", "subscribe", "subscribe", None]
        snapshot = acks[3]
        assert snapshot["action"] == "snapshot" and snapshot["data"][0]["prevSeqId"] == -1
        for topic in ("bbo-tbt:BTC-USDT", "books5:BTC-USDT", "books:BTC-USDT"):
            sim.burst(topic, 2)
        await client.wait(lambda: len(client.messages()) == 10)
        pushes = client.messages()[4:]
        bbo = [p["data"][0] for p in pushes if p["arg"]["channel"] == "bbo-tbt"]
        assert [len(b["asks"]) for b in bbo] == [1, 1] and [b["seqId"] for b in bbo] == [1, 2]
        books5 = [p["data"][0] for p in pushes if p["arg"]["channel"] == "books5"]
        assert len(books5[0]["bids"]) == 5 and books5[0]["instId"] == "BTC-USDT"
        books = [p for p in pushes if p["arg"]["channel"] == "books"]
        assert [b["action"] for b in books] == ["update", "update"]
        assert [(b["data"][0]["prevSeqId"], b["data"][0]["seqId"]) for b in books] == [
            (0, 1), (1, 2)]
        await client.close()


async def test_okx_book_channels_follow_the_trades_price_uncrossed_with_checksums() -> None:
    async with okx_sim() as sim:
        client = await connect(sim, "ws/v5/public")
        args = [{"channel": c, "instId": "BTC-USDT"}
                for c in ("trades", "bbo-tbt", "books5", "books")]
        client.send({"op": "subscribe", "args": args})
        await client.wait(lambda: len(client.messages()) == 5)
        for _ in range(20):
            for channel in ("trades", "bbo-tbt", "books5", "books"):
                sim.burst(f"{channel}:BTC-USDT", 1)
        await client.wait(lambda: len(client.messages()) == 85)
        await client.close()
    trade_px = 0.0
    pushes = [m for m in client.messages() if "data" in m]
    books = [m for m in pushes if m["arg"]["channel"] == "books"]
    assert books[0]["action"] == "snapshot" and len(books[0]["data"][0]["bids"]) == 40
    for message in pushes:
        channel, data = message["arg"]["channel"], message["data"][0]
        if channel == "trades":
            trade_px = float(data["px"])
            continue
        bids = [float(level[0]) for level in data["bids"]]
        asks = [float(level[0]) for level in data["asks"]]
        if channel == "books":
            assert data["checksum"] != 0  # the real CRC32 (its value: tests/testing/test_book)
            if message["action"] == "snapshot":
                assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
                assert bids[0] < asks[0]
            continue
        assert len(bids) == len(asks) == (1 if channel == "bbo-tbt" else 5)
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0] < asks[0]
        # the instrument's price, one random walk for its channels: within 0.5 %
        assert abs((bids[0] + asks[0]) / 2 - trade_px) < trade_px * 0.005, message


async def test_okx_checksum_fault_and_checksums_off() -> None:
    dialect = OkxDialect(channels=["books"])
    async with ExchangeSimulator(dialect=dialect, sequence_scope=SequenceScope.CONNECTION,
                                 rate_per_s=0) as sim:
        clients = [await connect(sim) for _ in range(2)]
        for client in clients:
            client.send({"op": "subscribe", "args": [{"channel": "books",
                                                      "instId": "BTC-USDT"}]})
            await client.wait(lambda c=client: len(c.messages()) == 2)  # type: ignore[misc]
        with pytest.raises(ValueError, match="books topic"):
            dialect.checksum_fault("books5:BTC-USDT")
        dialect.checksum_fault("books:BTC-USDT")
        sim.burst("books:BTC-USDT", 2)
        for client in clients:
            await client.wait(lambda c=client: len(c.messages()) == 4)  # type: ignore[misc]
        bad, good = ([c.messages()[n]["data"][0] for c in clients] for n in (2, 3))
        right = okx_checksum(*dialect.book_levels("books:BTC-USDT"))
        assert good[0]["checksum"] == good[1]["checksum"] == right
        # one event, one fault, on every connection; the levels themselves are right
        assert bad[0]["checksum"] == bad[1]["checksum"] not in (0, right)
        assert (bad[0]["bids"], bad[0]["asks"]) == (bad[1]["bids"], bad[1]["asks"])
        assert sim.faults["checksum"] == 1
        for client in clients:
            await client.close()
    async with ExchangeSimulator(dialect=OkxDialect(channels=["books"], checksums=False),
                                 rate_per_s=0) as sim:
        client = await connect(sim)
        client.send({"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]})
        await client.wait(lambda: len(client.messages()) == 2)
        sim.burst("books:BTC-USDT", 1)
        await client.wait(lambda: len(client.messages()) == 3)
        assert [m["data"][0]["checksum"] for m in client.messages()[1:]] == [0, 0]
        await client.close()


async def test_okx_login_then_private_channel() -> None:
    async with okx_sim() as sim:
        client = await connect(sim, "ws/v5/private")
        orders = {"channel": "orders", "instType": "ANY"}
        client.send({"id": "1", "op": "subscribe", "args": [orders]})
        client.send(login(OkxCredentials("key-1", "wrong", "pass-1")))
        client.send(login(CREDS, ts=int(time.time()) - 120))
        client.send(login(CREDS))
        client.send({"id": "2", "op": "subscribe", "args": [orders]})
        await client.wait(lambda: len(client.messages()) == 5)
        codes = [(m["event"], m["code"]) for m in client.messages()[:4]]
        assert codes == [("error", "60011"), ("error", "60007"), ("error", "60006"),
                         ("login", "0")]
        assert client.messages()[4] == {"id": "2", "event": "subscribe", "arg": orders,
                                        "connId": client.messages()[0]["connId"]}
        assert (sim.logins_ok, sim.logins_failed) == (1, 2)
        sim.burst("orders:instType=ANY", 1)
        await client.wait(lambda: len(client.messages()) == 6)
        push = client.messages()[5]
        assert push["arg"]["channel"] == "orders" and "uid" in push["arg"]
        # public channels are not on /private, private ones not on /public
        client.send({"op": "subscribe", "args": [{"channel": "trades", "instId": "BTC-USDT"}]})
        await client.wait(lambda: len(client.messages()) == 7)
        assert client.messages()[6]["code"] == "60018"
        await client.close()


async def test_okx_idle_cut_and_pings_keep_alive() -> None:
    async with okx_sim(idle_timeout_s=0.4) as sim:
        idle = await connect(sim, "ws/v5/public")
        pinging = await connect(sim, "ws/v5/public")
        for _ in range(8):
            pinging.send("ping")
            await asyncio.sleep(0.1)
        assert await closed_by_server(idle) == okx.IDLE_CLOSE
        assert not pinging.disconnected.is_set()
        assert sim.stats()["dialect"]["idle_cuts"] == 1
        await pinging.close()


async def test_okx_request_budget() -> None:
    async with okx_sim(request_budget=(2, 60.0)) as sim:
        client = await connect(sim)
        arg = {"channel": "trades", "instId": "BTC-USDT"}
        for n in range(3):
            client.send({"id": str(n), "op": "subscribe", "args": [arg]})
        client.send("ping")  # pings are not requests
        await client.wait(lambda: len(client.messages()) == 4)
        *_, refused, pong = client.messages()
        assert (refused["id"], refused["code"]) == ("2", "60014") and pong == b"pong"
        assert sim.limit_hits == 1


async def test_okx_connection_scope_books_snapshot_uses_the_connections_numbers() -> None:
    dialect = OkxDialect(channels=["books"])
    async with ExchangeSimulator(dialect=dialect, sequence_scope=SequenceScope.CONNECTION) as sim:
        client = await connect(sim)
        client.send({"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]})
        await client.wait(lambda: len(client.messages()) == 2)
        sim.burst("books:BTC-USDT", 1)
        await client.wait(lambda: len(client.messages()) == 3)
        snapshot, update = client.messages()[1:]
        assert snapshot["data"][0]["seqId"] == 0 and update["data"][0]["prevSeqId"] == 0
        await client.close()


def test_orjson_round_trip_of_every_payload_shape() -> None:
    from defi_ws.testing.dialects.base import Event

    event = Event(3, 101.5, "101.50", "0.5000", 1700000000000, True, False)
    for dialect in (BinanceDialect(channels=bn.ALL_CHANNELS),
                    BinanceDialect(product=Product.USDM, channels=bn.ALL_CHANNELS)):
        for stream in ("btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth", "btcusdt@bookTicker"):
            assert orjson.loads(dialect.payload(stream, 3, event))["s"] == "BTCUSDT"
    for topic in ("trades:BTC-USDT", "bbo-tbt:BTC-USDT", "books5:BTC-USDT", "books:BTC-USDT",
                  "orders:instType=ANY"):
        assert orjson.loads(OkxDialect().payload(topic, 3, event))["data"]
