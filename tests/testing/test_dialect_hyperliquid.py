"""The simulator's Hyperliquid dialect, driven by raw picows clients on asyncio and uvloop:
the ``/ws`` path, acks and error texts, JSON ping, push shapes, broken books for book
tests, trade backfill, the idle cut and the per-IP caps."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import picows
import pytest

from defi_ws.testing import ExchangeSimulator
from defi_ws.testing.dialects import Dialect, HyperliquidDialect
from defi_ws.testing.dialects import hyperliquid as hl
from tests.testing.test_simulator_limits import Client, closed_by_server

WAIT_S = 20.0


async def connect(sim: ExchangeSimulator, path: str = "ws") -> Client:
    _, client = await picows.ws_connect(Client, sim.url + path)
    assert isinstance(client, Client)
    return client


def sub(kind: str, coin: str | None = None, **extra: Any) -> dict[str, Any]:
    subscription: dict[str, Any] = {"type": kind}
    if coin is not None:
        subscription["coin"] = coin
    return {**subscription, **extra}


def test_enum_value_and_options() -> None:
    assert isinstance(Dialect.HYPERLIQUID.implementation(), HyperliquidDialect)
    assert ExchangeSimulator(dialect="hyperliquid").dialect is Dialect.HYPERLIQUID
    with pytest.raises(ValueError, match="channels"):
        HyperliquidDialect(channels=["candle"])
    with pytest.raises(ValueError, match="max_subscriptions"):
        HyperliquidDialect(max_subscriptions=0)
    with pytest.raises(ValueError, match="message_budget"):
        HyperliquidDialect(message_budget=(0, 1.0))
    assert hl.trade_id("trades:BTC", 1) != hl.trade_id("trades:BTC", 2) < 1 << 50


async def test_acks_errors_and_pong() -> None:
    async with ExchangeSimulator(dialect=Dialect.HYPERLIQUID,
                                 reject_topics={"trades:NOPE"}) as sim:
        client = await connect(sim)
        requests: list[Any] = [
            {"method": "subscribe", "subscription": sub("trades", "BTC")},
            {"method": "subscribe", "subscription": sub("trades", "BTC")},
            {"method": "subscribe", "subscription": sub("trades", "NOPE")},
            {"method": "unsubscribe", "subscription": sub("bbo", "BTC")},
            {"method": "subscribe", "xsubscription": sub("bbo", "BTC")},
            {"method": "subscribe", "subscription": sub("allMids", "BTC")},  # no coin there
            {"method": "ping"},
            {"method": "unsubscribe", "subscription": sub("trades", "BTC")},
        ]
        for request in requests:
            client.send(request)
        await client.wait(lambda: len(client.messages()) == len(requests), WAIT_S)
        ack, dup, refused, not_there, malformed, coinless, pong, gone = client.messages()
        assert ack == {"channel": "subscriptionResponse", "data": requests[0]}
        assert dup == {"channel": "error",
                       "data": 'Already subscribed: {"type":"trades","coin":"BTC"}'}
        assert refused["data"] == hl.PARSE_ERROR + orjson.dumps(requests[2]).decode()
        assert not_there["data"] == 'Already unsubscribed: {"type":"bbo","coin":"BTC"}'
        assert malformed["data"].startswith(hl.PARSE_ERROR)
        assert coinless["data"].startswith(hl.PARSE_ERROR)
        assert pong == {"channel": "pong"} and sim.pongs_sent == 1
        assert gone == {"channel": "subscriptionResponse", "data": requests[7]}
        assert sim.duplicate_subscribes == 1 and sim.subscribers("trades:BTC") == 0
        await client.close()


async def test_other_paths_are_refused() -> None:
    async with ExchangeSimulator(dialect=Dialect.HYPERLIQUID) as sim:
        with pytest.raises(picows.WSError):
            await connect(sim, "stream")
        assert sim.handshake_statuses == [404]


async def test_push_shapes_of_every_channel() -> None:
    async with ExchangeSimulator(dialect=HyperliquidDialect(book_depth=20)) as sim:
        client = await connect(sim)
        subscriptions = [sub("trades", "BTC"), sub("l2Book", "ETH"),
                         sub("l2Book", "SOL", fast=True), sub("bbo", "xyz:SP500"),
                         sub("allMids")]
        for subscription in subscriptions:
            client.send({"method": "subscribe", "subscription": subscription})
        topics = [hl.topic_key(s) for s in subscriptions]
        assert topics == ["trades:BTC", "l2Book:ETH", "l2Book:SOL,fast=true", "bbo:xyz:SP500",
                          "allMids"]
        await sim.wait_for(lambda: all(sim.subscribers(t) == 1 for t in topics), WAIT_S)
        for topic in topics:
            sim.burst(topic, 1)
        await client.wait(lambda: len(client.messages()) == 10, WAIT_S)
        trades, book, fast, bbo, mids = client.messages()[5:]
        [trade] = trades["data"]
        assert set(trade) == {"coin", "side", "px", "sz", "time", "hash", "tid", "users"}
        assert trade["coin"] == "BTC" and trade["side"] in ("A", "B")
        assert trade["tid"] == hl.trade_id("trades:BTC", 1) and len(trade["hash"]) == 66
        assert book["channel"] == "l2Book" and set(book["data"]) == {"coin", "time", "levels"}
        bids, asks = book["data"]["levels"]
        assert len(bids) == len(asks) == 20 and set(bids[0]) == {"px", "sz", "n"}
        assert float(bids[0]["px"]) < float(asks[0]["px"])
        assert [len(side) for side in fast["data"]["levels"]] == [5, 5]
        assert bbo["data"]["coin"] == "xyz:SP500" and len(bbo["data"]["bbo"]) == 2
        assert set(mids["data"]["mids"]) == set(hl.MID_COINS)
        await client.close()


async def test_broken_books_and_trade_backfill() -> None:
    dialect = HyperliquidDialect(trade_backfill=3)
    async with ExchangeSimulator(dialect=dialect) as sim:
        client = await connect(sim)
        for subscription in (sub("l2Book", "BTC"), sub("trades", "ETH")):
            client.send({"method": "subscribe", "subscription": subscription})
        await sim.wait_for(lambda: sim.subscribers("trades:ETH") == 1, WAIT_S)
        sim.burst("l2Book:BTC", 1)
        dialect.cross_next("l2Book:BTC")
        sim.burst("l2Book:BTC", 1)
        dialect.rewind_next("l2Book:BTC")
        sim.burst("l2Book:BTC", 2)
        sim.burst("trades:ETH", 5)
        await client.wait(lambda: len(client.messages()) == 11, WAIT_S)
        books = [m["data"] for m in client.messages() if m["channel"] == "l2Book"]
        best = [(float(b["levels"][0][0]["px"]), float(b["levels"][1][0]["px"])) for b in books]
        assert [bid < ask for bid, ask in best] == [True, False, True, True]
        times = [b["time"] for b in books]
        assert times[2] < times[1] <= times[3]
        late = await connect(sim)
        late.send({"method": "subscribe", "subscription": sub("trades", "ETH")})
        await late.wait(lambda: len(late.messages()) == 2, WAIT_S)
        backfill = late.messages()[1]["data"]
        assert [t["tid"] for t in backfill] == [hl.trade_id("trades:ETH", n) for n in (3, 4, 5)]
        await client.close()
        await late.close()


async def test_idle_cut_spares_a_pinging_connection() -> None:
    async with ExchangeSimulator(dialect=HyperliquidDialect(idle_timeout_s=0.4)) as sim:
        idle, pinging = await connect(sim), await connect(sim)
        for _ in range(8):
            pinging.send({"method": "ping"})
            await asyncio.sleep(0.1)
        assert await closed_by_server(idle) == hl.IDLE_CLOSE
        assert not pinging.disconnected.is_set()
        assert sim.stats()["dialect"]["idle_cuts"] == 1
        await pinging.close()


async def test_per_ip_caps() -> None:
    dialect = HyperliquidDialect(max_subscriptions=2, message_budget=(3, 60.0),
                                 max_connections=2)
    async with ExchangeSimulator(dialect=dialect) as sim:
        first, second = await connect(sim), await connect(sim)
        with pytest.raises(picows.WSError):
            await connect(sim)  # a third open connection
        assert sim.handshake_statuses == [429]
        first.send({"method": "subscribe", "subscription": sub("trades", "A")})
        await first.wait(lambda: len(first.messages()) == 1, WAIT_S)
        second.send({"method": "subscribe", "subscription": sub("trades", "B")})
        second.send({"method": "subscribe", "subscription": sub("trades", "C")})
        await second.wait(lambda: len(second.messages()) == 2, WAIT_S)
        assert second.messages()[1] == {"channel": "error",
                                        "data": "Cannot subscribe to more than 2 channels."}
        second.send({"method": "ping"})  # the 4th message from this IP in the window
        await second.wait(lambda: len(second.messages()) == 3, WAIT_S)
        assert second.messages()[2] == {
            "channel": "error", "data": "Cannot send more than 3 messages per minute."}
        assert dialect.stats() == {"idle_cuts": 0, "subscription_refusals": 1,
                                   "budget_violations": 1, "connection_refusals": 1}
        assert sim.limit_hits == 3
        await first.close()
        await second.close()


async def test_no_notice_exists() -> None:
    async with ExchangeSimulator(dialect=Dialect.HYPERLIQUID) as sim:
        client = await connect(sim)
        [conn] = sim.connections
        with pytest.raises(NotImplementedError, match="no cut"):
            sim.dialect_impl.notice(conn, 1.0)
        await client.close()
